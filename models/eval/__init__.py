"""Evaluation of trained few-shot models: the validation bound (``bound``) and the protocol
(``protocol``: NLL tables, classification, Lake's runs, pictures, reports). Depends only on
``varmem.models`` and ``varmem.episodes``."""
