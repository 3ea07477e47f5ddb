"""Scaled mode: every `python app.py` started with the same REDIS_URL and DATABASE_URL is a node
of one server.

- Redis holds what nodes must agree on: the nodes alive (each renews its own lease), which node
  owns each live call (with a fencing number raised at every change of owner), the stream ids,
  and the webhook ids already handled.
- PostgreSQL holds the event log and the call history (eventlog/), shared by every node.
- A call lives on one node: the first that needed it (its first webhook), then the node that holds
  its media socket, which takes it over with its state (`handoff`). Any node takes any request
  and forwards the ones for another node's call to that node, signed with CLUSTER_SECRET.

Nothing here runs on the 20 ms media path: the clock and the sockets never wait on Redis.
"""
