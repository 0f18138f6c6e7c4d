"""The asyncio client against the embedded stack (moto server, the local gateway calling the API function, an
agent): what an application built on asyncio does with it."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from runly_cli.embedded.stack import EmbeddedStack
from runly_client.client import AsyncRunlyClient, BadRequest, Forbidden, NotFound
from runly_core.contracts import CreateKeyRequest, EnqueueRunRequest, PackageVersionView, RunState, RunView, Scope


def test_async_client_enqueues_idempotently_waits_and_reads_logs(
    stack: EmbeddedStack, hello: PackageVersionView
) -> None:
    key = f"order-{uuid.uuid4().hex[:8]}"
    request = EnqueueRunRequest(package="hello", job="hello", config={"name": "async", "times": 2})

    async def main() -> tuple[list[RunView], RunView, list[str], list[str], str]:
        async with AsyncRunlyClient(stack.api_url, api_key=stack.admin_key) as client:
            # Given two requests of an application for the same order, at the same time
            twins = await asyncio.gather(*(client.enqueue(request, idempotency_key=key) for _ in range(2)))
            # When it waits for the run and reads what it printed
            run = await client.wait(twins[0].id, timeout=120)
            followed = [text async for text in client.follow_logs(run.id, interval=0.2)]
            listed = [r.id async for r in client.iter_runs(page_size=5, package="hello", state="Succeeded")]
            whole = await client.download_logs(run.id)
            return list(twins), run, followed, listed, whole

    twins, run, followed, listed, whole = asyncio.run(main())

    # Then both requests got the one run, which ran once and succeeded
    assert twins[0].id == twins[1].id
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.output["greetings"] == ["Hello, async!"] * 2 and len(run.attempts) == 1
    assert "Hello, async!" in "".join(followed) and "".join(followed) == whole
    assert run.id in listed


def test_async_client_runs_enqueues_concurrently_over_its_pool(stack: EmbeddedStack, hello: PackageVersionView) -> None:
    async def main() -> list[RunView]:
        async with AsyncRunlyClient(stack.api_url, api_key=stack.admin_key) as client:
            requests = [EnqueueRunRequest(package="hello", job="hello", config={"name": f"n{n}"}) for n in range(8)]
            batch = await client.enqueue_many(requests[:4])
            single = await asyncio.gather(*(client.enqueue(r) for r in requests[4:]))
            return [*batch, *single]

    runs = asyncio.run(main())
    assert len({run.id for run in runs}) == 8  # generated keys: one run per call, none merged
    assert [run.config["name"] for run in runs] == [f"n{n}" for n in range(8)]


def test_async_client_raises_the_apis_errors(stack: EmbeddedStack, hello: PackageVersionView) -> None:
    async def main(call: str) -> None:
        async with AsyncRunlyClient(stack.api_url, api_key=stack.admin_key) as client:
            if call == "missing":
                await client.get_run("run_does_not_exist")
            else:
                await client.enqueue(EnqueueRunRequest(package="hello", job="hello", config={"times": 0}))

    with pytest.raises(NotFound) as missing:
        asyncio.run(main("missing"))
    assert missing.value.status == 404
    with pytest.raises(BadRequest) as invalid:
        asyncio.run(main("invalid"))
    assert invalid.value.status == 422 and invalid.value.error.field == "config.times"


def test_async_client_manages_keys_and_knows_its_own(stack: EmbeddedStack) -> None:
    async def main() -> tuple[str, str, list[str], list[str], str]:
        async with AsyncRunlyClient(stack.api_url, api_key=stack.admin_key) as admin:
            me = await admin.me()
            created = await admin.create_key(CreateKeyRequest(name="async reader", scope=Scope.READ))
            async with AsyncRunlyClient(stack.api_url, api_key=created.secret) as reader:
                their = await reader.me()
                try:
                    await reader.create_key(CreateKeyRequest(name="not allowed", scope=Scope.READ))
                    refused = "allowed"
                except Forbidden as exc:
                    refused = exc.error.code
            listed = [key.id for key in await admin.list_keys() if key.revoked_at is None]
            await admin.revoke_key(created.id)
            after = [key.id for key in await admin.list_keys() if key.revoked_at is None]
            return me.scope, their.scope, listed, after, refused

    me, theirs, listed, after, refused = asyncio.run(main())
    assert (me, theirs) == (Scope.ADMIN, Scope.READ)
    created = next(key for key in listed if key not in after)  # revoked: listed before, not after
    assert created and refused != "allowed"
