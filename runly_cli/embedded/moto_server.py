"""moto's server for the embedded stack, with SQS's in-flight cap applied as SQS applies it.

moto counts a message's 12 hours in flight from when it was sent, and one entry of a ChangeMessageVisibilityBatch
that crosses them fails the whole request. SQS counts them from each receipt, and fails that entry alone. This
wraps moto's SQS so the embedded stack behaves as SQS does, with a cap that tests lower
(``--sqs-max-in-flight-seconds``, ``EmbeddedStack.sqs_max_in_flight_seconds``) to see in seconds what a long
run meets after 12 hours.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from moto import server
from moto.core.utils import unix_time_millis
from moto.sqs import models
from moto.sqs.exceptions import InvalidParameterValue, ReceiptHandleIsInvalid

from runly_core.resources import SQS_MAX_IN_FLIGHT_SECONDS


def apply_in_flight_cap(max_seconds: int) -> None:
    """Refuse visibility changes that keep a message in flight more than ``max_seconds`` after its receipt."""
    mark_received = models.Message.mark_received
    change_visibility = models.SQSBackend.change_message_visibility

    def received(message: Any, visibility_timeout: int | None = None) -> None:
        message.runly_received_ms = int(unix_time_millis())
        mark_received(message, visibility_timeout)

    def capped(backend: Any, queue_name: str, receipt_handle: str, visibility_timeout: int) -> None:
        for message in backend.get_queue(queue_name)._messages:
            if message.had_receipt_handle(receipt_handle):
                since = getattr(message, "runly_received_ms", message.sent_timestamp)
                # 0 ends the message's time in flight: never refused, as SQS never refuses it.
                ending = int(visibility_timeout) == 0
                if not ending and unix_time_millis() + int(visibility_timeout) * 1000 - since > max_seconds * 1000:
                    raise InvalidParameterValue(
                        f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason: Total "
                        f"VisibilityTimeout for the message is beyond the limit [{max_seconds} seconds]"
                    )
                break
        change_visibility(backend, queue_name, receipt_handle, visibility_timeout)

    def capped_batch(backend: Any, queue_name: str, entries: list[dict[str, Any]]) -> tuple[list[str], list[Any]]:
        changed: list[str] = []
        failed: list[dict[str, Any]] = []
        for entry in entries:
            try:
                capped(backend, queue_name, entry["ReceiptHandle"], int(entry["VisibilityTimeout"]))
            except (InvalidParameterValue, ReceiptHandleIsInvalid) as exc:
                failed.append({"Id": entry["Id"], "SenderFault": True, "Code": exc.code, "Message": exc.message})
            else:
                changed.append(entry["Id"])
        return changed, failed

    models.Message.mark_received = received  # type: ignore[method-assign,assignment]
    models.SQSBackend.change_message_visibility = capped  # type: ignore[method-assign,assignment]
    models.SQSBackend.change_message_visibility_batch = capped_batch  # type: ignore[method-assign,assignment]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, add_help=False)
    parser.add_argument("--sqs-max-in-flight-seconds", type=int, default=SQS_MAX_IN_FLIGHT_SECONDS)
    ours, theirs = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    apply_in_flight_cap(ours.sqs_max_in_flight_seconds)
    server.main(theirs)


if __name__ == "__main__":
    main()
