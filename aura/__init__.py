"""AURA: Adaptive User Response Agent.

`aura.v1` holds the generated gRPC contract, `aura.bundle` the artifact bundle format shared by
the batch (writer) and the edge (reader), `aura.server` the decision hot path, `aura.edge` bundle
sync and the HTTP gateway, and `aura.batch` the jobs that build bundles.
"""
