"""runly's platform core, shared by the Lambda functions, the node agent, the client and the CLI.

- ``contracts``: the API's request and response models;
- ``records``: the items stored in the table, and the names of their attributes;
- ``run_store``: the run's state machine on the table (every write to a run item) and the run item's keys;
  ``key_store``: API keys on the table; ``table``: the conditional-failure check and batch writes;
- ``resources``: names and settings of the AWS resources (the CDK stack and the embedded stack read both);
- ``bundle``: the package format a node installs offline;
- ``keys``: API keys' format and hashing; ``strict_json``: the JSON every request body is parsed as;
  ``backoff``: the one retry delay formula.
"""

__version__ = "0.1.0"
