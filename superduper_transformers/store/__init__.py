"""The database side, no training: atomic copies into the artifact store and connecting
to a datalayer. The store's components (``Checkpoint``, ``TrainingRun``) and their
operations live in ``superduper_transformers.checkpoint`` and ``superduper_transformers.resume``:
superduper records a component's import path in every database that holds one, so
those paths stay as they are."""
