"""Many replicas: policy sync toward the shared desired state, the rollout leader, fleet metrics."""
