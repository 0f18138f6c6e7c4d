"""runly's benchmarks (``make bench``): speed, scale and cost on the embedded stack, beside Celery on SQS.

Modules: ``stats``, ``counting`` and ``pricing`` are pure (unit-tested in tests/unit/test_bench_*.py);
``hooks/sitecustomize.py`` counts the AWS calls of the gateway and agent processes; ``ours`` drives runly;
``peer_celery`` runs in its own venv (bench/.venv-celery) and drives Celery; ``report`` and ``chart`` write
REPORT.md and latency.png; ``__main__`` runs the whole thing.
"""
