"""What node agents need from the control plane beyond the HTTP API: their AWS permissions and, for
on-premises nodes, short-lived credentials in exchange for a node key."""
