"""Forwarding committed events to brokers (EventBridge, SQS): the outbox relay.

Events are durable in the store before any broker sees them. Each broker
has a durable subscription ``broker:<name>`` over every tenant, so a broker
outage or a crash only delays forwarding: leases time out, deliveries are
retried with backoff, and after ``max_attempts`` they wait in the dead
letters for a redrive. Order per subject is kept, as for any subscription.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from datamcp.core.background import cancel_and_wait
from datamcp.core.events.bus import EventBus
from datamcp.core.events.model import ALL_TENANTS, EventFilter
from datamcp.core.events.ports import Broker
from datamcp.core.events.subscriptions import SubscriptionService
from datamcp.core.health import CheckResult, Status
from datamcp.core.resilience import CircuitBreaker, CircuitState

log = logging.getLogger(__name__)


class BrokerRelay:
    def __init__(
        self,
        broker: Broker,
        subscriptions: SubscriptionService,
        bus: EventBus,
        event_filter: EventFilter,
        *,
        batch: int = 10,
        poll_interval: float = 0.5,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.broker = broker
        self.name = f"broker:{broker.name}"
        self._subscriptions = subscriptions
        self._bus = bus
        self._filter = event_filter
        self._batch = batch
        self._poll = poll_interval
        self._consumer = uuid.uuid4().hex[:16]
        # While the broker keeps failing, stop leasing: an outage must not use
        # up the deliveries' attempts.
        self.breaker = breaker or CircuitBreaker(self.name)
        self._task: asyncio.Task[None] | None = None
        self._last_error = ""
        self.forwarded = 0

    async def start(self) -> None:
        # Brokers get many attempts (backoff caps at a minute): a long outage
        # should delay forwarding, not dead-letter it.
        sub = await self._subscriptions.ensure(
            ALL_TENANTS, self.name, self._filter, max_attempts=100
        )
        self._task = asyncio.create_task(self._run(sub.name), name=self.name)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self.broker.close()

    async def check(self) -> CheckResult:
        if self._task is None or self._task.done():
            return CheckResult(Status.UNHEALTHY, "relay is not running")
        state = self.breaker.state
        if state is not CircuitState.CLOSED:
            return CheckResult(
                Status.DEGRADED,
                f"circuit {state.value}: {self._last_error}",
                {"circuit": state.value, "retry_after": f"{self.breaker.retry_after():.1f}"},
            )
        if self._last_error:
            return CheckResult(Status.DEGRADED, f"last forward failed: {self._last_error}")
        return CheckResult(Status.HEALTHY, f"{self.forwarded} events forwarded")

    async def _run(self, name: str) -> None:
        while True:
            try:
                if not self.breaker.allow():
                    await asyncio.sleep(min(self._poll, self.breaker.retry_after()) or self._poll)
                    continue
                sub = await self._subscriptions.get(ALL_TENANTS, name)
                deliveries = await self._subscriptions.lease(sub, self._consumer, self._batch)
                if not deliveries:
                    self.breaker.cancel_trial()  # nothing was sent: nothing learnt
                    await self._bus.wait_for_commit(self._poll)
                    continue
                seqs = [d.event.seq for d in deliveries]
                try:
                    await self.broker.publish([d.event for d in deliveries])
                except Exception as exc:
                    self.breaker.record_failure()
                    self._last_error = f"{type(exc).__name__}: {exc}"[:300]
                    log.warning("broker forward failed", extra={"broker": self.name}, exc_info=exc)
                    for seq in seqs:
                        await self._subscriptions.nack(sub, seq, self._last_error)
                    continue
                await self._subscriptions.ack(sub, seqs)
                self.breaker.record_success()
                self._last_error = ""
                self.forwarded += len(seqs)
            except asyncio.CancelledError:
                raise
            except Exception:  # the store is down: wait and carry on
                log.warning("broker relay loop failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
