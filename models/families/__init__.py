"""The built-in model families; importing this package registers them (``varmem.models.registry``).

One module per family, one ``@register(name, Config)`` line in it, one test file
``tests/models/families/test_<family>.py`` running the shared conformance suite.
"""
from varmem.models.families import soft_attention, vae, vma  # noqa: F401  (registration)
from varmem.models.families import matching_networks  # noqa: F401
from varmem.models.families import gmn  # noqa: F401
from varmem.models.families import sequential  # noqa: F401
from varmem.models.families import neural_statistician  # noqa: F401
