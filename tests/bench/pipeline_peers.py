"""Hand-written peers of the pipelines bench workloads: Polars, DuckDB and
pandas doing the same jobs as the pipeline specs in ``pipelines.py``, each
the idiomatic way (null markers included), writing the same SQLite tables.

- W1: cast amount/price to float and qty to integer (``NA`` is null), keep
  ``amount > 50 and status != 'cancelled'``, derive ``total = qty * price``.
- W2: group by region_code, category: count, avg(amount), max(price).
- W3: left lookup of regions (region_name, manager) on region_code, then
  dedupe on order_ref (first row wins).

Polars and DuckDB write through ADBC's SQLite driver (Arrow in, C inserts);
pandas through ``to_sql`` (sqlite3 executemany).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

NULLS = ["NA"]


def _adbc_write(table: str, db_path: Path, data: Any) -> None:
    import adbc_driver_sqlite.dbapi as adbc

    with adbc.connect(str(db_path)) as conn:
        with conn.cursor() as cur:
            cur.adbc_ingest(table, data, mode="create")
        conn.commit()


# ---- Polars ------------------------------------------------------------------------------


def polars_job(workload: str, src: Path, regions: Path, db_path: Path) -> int:
    import polars as pl

    lf = pl.scan_csv(src, null_values=NULLS, infer_schema=False)
    if workload == "w1":
        out = (
            lf.with_columns(
                pl.col("amount").cast(pl.Float64, strict=False),
                pl.col("price").cast(pl.Float64, strict=False),
                pl.col("qty").cast(pl.Int64, strict=False),
            )
            .filter((pl.col("amount") > 50) & (pl.col("status") != "cancelled"))
            .with_columns(total=pl.col("qty") * pl.col("price"))
        )
    elif workload == "w2":
        out = (
            lf.select("region_code", "category", "amount", "price")
            .with_columns(
                pl.col("amount").cast(pl.Float64, strict=False),
                pl.col("price").cast(pl.Float64, strict=False),
            )
            .group_by("region_code", "category")
            .agg(
                pl.len().alias("n"),
                pl.col("amount").mean().alias("avg_amount"),
                pl.col("price").max().alias("max_price"),
            )
        )
    else:
        dim = pl.scan_csv(regions, null_values=NULLS, infer_schema=False)
        out = lf.join(dim, left_on="region_code", right_on="code", how="left").unique(
            subset=["order_ref"], keep="first", maintain_order=True
        )
    df = out.collect(engine="streaming")
    _adbc_write(workload, db_path, df)
    return df.height


# ---- DuckDB ------------------------------------------------------------------------------


def duckdb_job(workload: str, src: Path, regions: Path, db_path: Path) -> int:
    import duckdb

    con = duckdb.connect()
    read = f"read_csv('{src}', all_varchar = true, nullstr = 'NA', header = true)"
    if workload == "w1":
        sql = f"""
            SELECT * EXCLUDE (amount, price, qty),
                   TRY_CAST(amount AS DOUBLE) AS amount,
                   TRY_CAST(price AS DOUBLE) AS price,
                   TRY_CAST(qty AS BIGINT) AS qty,
                   TRY_CAST(qty AS BIGINT) * TRY_CAST(price AS DOUBLE) AS total
            FROM {read}
            WHERE TRY_CAST(amount AS DOUBLE) > 50 AND status <> 'cancelled'
        """
    elif workload == "w2":
        sql = f"""
            SELECT region_code, category, count(*) AS n,
                   avg(TRY_CAST(amount AS DOUBLE)) AS avg_amount,
                   max(TRY_CAST(price AS DOUBLE)) AS max_price
            FROM {read} GROUP BY ALL
        """
    else:
        dim = f"read_csv('{regions}', all_varchar = true, nullstr = 'NA', header = true)"
        sql = f"""
            SELECT * EXCLUDE (rn) FROM (
                SELECT o.*, d.region_name, d.manager,
                       row_number() OVER (PARTITION BY o.order_ref ORDER BY o.rowid) AS rn
                FROM (SELECT *, row_number() OVER () AS rowid FROM {read}) o
                LEFT JOIN {dim} d ON o.region_code = d.code
            ) WHERE rn = 1
        """
    reader = con.sql(sql).fetch_record_batch(100_000)
    _adbc_write(workload, db_path, reader)
    count = sqlite3.connect(db_path).execute(f"SELECT count(*) FROM {workload}").fetchone()[0]
    return int(count)


# ---- pandas ------------------------------------------------------------------------------


def pandas_job(workload: str, src: Path, regions: Path, db_path: Path) -> int:
    import pandas as pd

    if workload == "w2":
        df = pd.read_csv(
            src,
            usecols=["region_code", "category", "amount", "price"],
            dtype={"region_code": str, "category": str, "amount": float, "price": float},
            na_values=NULLS,
            keep_default_na=False,
        )
        out = (
            df.groupby(["region_code", "category"], dropna=False)
            .agg(n=("category", "size"), avg_amount=("amount", "mean"), max_price=("price", "max"))
            .reset_index()
        )
    else:
        df = pd.read_csv(src, dtype=str, na_values=NULLS, keep_default_na=False)
        if workload == "w1":
            df["amount"] = pd.to_numeric(df["amount"], errors="coerce")
            df["price"] = pd.to_numeric(df["price"], errors="coerce")
            df["qty"] = pd.to_numeric(df["qty"], errors="coerce").astype("Int64")
            out = df[(df["amount"] > 50) & (df["status"] != "cancelled")].copy()
            out["total"] = out["qty"] * out["price"]
        else:
            dim = pd.read_csv(regions, dtype=str, keep_default_na=False)
            out = df.merge(dim, how="left", left_on="region_code", right_on="code")
            out = out.drop(columns=["code"]).drop_duplicates(subset=["order_ref"], keep="first")
    db = sqlite3.connect(db_path)
    out.to_sql(workload, db, index=False)
    db.commit()
    db.close()
    return len(out)


PEERS = {"polars": polars_job, "duckdb": duckdb_job, "pandas": pandas_job}
