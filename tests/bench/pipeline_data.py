"""A generated, real-shaped input for the pipelines bench: an orders export
of ~20 columns of mixed types (integers, floats, short and long text with
commas, quotes and line breaks, ISO timestamps and dates, booleans) where
about 3% of the cells of the nullable columns hold the marker ``NA``, plus a
small regions table for the lookup join.

Deterministic for a seed; written with ``csv.writer`` (quotes where needed).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

COLUMNS = [
    "order_id",
    "order_ref",
    "created_at",
    "ship_date",
    "customer",
    "email",
    "region_code",
    "category",
    "status",
    "amount",
    "qty",
    "price",
    "discount",
    "score",
    "is_gift",
    "channel",
    "sku",
    "lat",
    "lon",
    "note",
]
NA = "NA"
NA_SHARE = 0.03
REGIONS = [f"R{n:02d}" for n in range(40)]
CATEGORIES = ["books", "garden", "toys", "food", "tools", "music", "games", "shoes"]
STATUSES = ["paid", "paid", "paid", "shipped", "refunded", "cancelled"]
CHANNELS = ["web", "app", "store", "phone"]
WORDS = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
]


def generate(path: Path, rows: int, seed: int = 11) -> None:
    """``rows`` orders; ~7% of the rows repeat an earlier ``order_ref`` (the
    dedupe workload's duplicates)."""
    rnd = random.Random(seed)

    def na(value: str) -> str:
        return NA if rnd.random() < NA_SHARE else value

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(rows):
            ref = i if i < 100 or rnd.random() > 0.07 else rnd.randrange(i)
            day = 1 + i % 28
            month = 1 + (i // 28) % 12
            note = " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(3, 14)))
            if i % 17 == 0:
                note = f'{note}, "quoted", and more'
            if i % 101 == 0:
                note = f"{note}\nsecond line"
            w.writerow(
                [
                    i,
                    f"REF-{ref:08d}",
                    f"2024-{month:02d}-{day:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}",
                    na(f"2024-{month:02d}-{day:02d}"),
                    f"{rnd.choice(WORDS).title()}, {rnd.choice(WORDS).title()}",
                    na(f"user{rnd.randrange(200_000)}@example.com"),
                    na(REGIONS[i % len(REGIONS)]),
                    CATEGORIES[(i * 7) % len(CATEGORIES)],
                    rnd.choice(STATUSES),
                    na(f"{rnd.random() * 100:.2f}"),
                    na(str(rnd.randrange(1, 20))),
                    na(f"{rnd.random() * 500:.2f}"),
                    na(f"{rnd.random() * 0.3:.3f}"),
                    na(f"{rnd.gauss(50, 15):.4f}"),
                    na("true" if i % 9 == 0 else "false"),
                    CHANNELS[i % len(CHANNELS)],
                    f"SKU-{rnd.randrange(5000):05d}",
                    na(f"{rnd.uniform(-90, 90):.5f}"),
                    na(f"{rnd.uniform(-180, 180):.5f}"),
                    na(note),
                ]
            )


def generate_regions(path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["code", "region_name", "manager"])
        for n, code in enumerate(REGIONS):
            w.writerow([code, f"Region {n}", f"Manager, {WORDS[n % len(WORDS)].title()}"])
