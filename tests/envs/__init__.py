"""Small Gymnasium envs for tests (importable through `env.imports`)."""
