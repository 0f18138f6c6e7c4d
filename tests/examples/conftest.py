"""The examples' own tests, as their authors would write them with runly.testing.

Each example is a project of its own (examples/<name>/src); its package is imported from source.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

for source in sorted(EXAMPLES.glob("*/src")):
    if str(source) not in sys.path:
        sys.path.insert(0, str(source))
