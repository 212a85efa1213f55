"""End-to-end tests against a real control plane (see harness/ and cluster/build.sh)."""
