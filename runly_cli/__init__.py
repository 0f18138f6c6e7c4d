"""The `runly` command: authoring, packing, publishing, following runs, and the embedded stack."""
