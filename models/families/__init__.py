"""The built-in model families; importing this package registers them (``varmem.models.registry``).

One module per family, one ``@register(name, Config)`` line in it, one test file
``tests/models/families/test_<family>.py`` running the shared conformance suite.
"""
from varmem.models.families import soft_attention, vae, vma  # noqa: F401  (registration)
