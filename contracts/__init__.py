"""What the stages, the predictor and the local stack agree on — one owner per hand-off.

- `contracts.names`: the registered model, its MLflow experiment and aliases, the artefact
  folder inside a run, the response header that names the served version;
- `contracts.settings`: every environment variable a component reads, with its one default;
- `contracts.layout`: where snapshots, events and the local stack's state live on disk;
- `contracts.inferenceservice`: the InferenceService fields the rollout tool writes and the
  local controller reads, and how a status's traffic is shown;
- `contracts.files`: sha256, atomic writes, pid checks;
- `contracts.errors`: the base error that carries an exit code and an HTTP status.

Standard library only, and nothing of the project: every other package may import it, it
imports none of them (`tests/unit/test_imports.py` checks both rules).
"""
