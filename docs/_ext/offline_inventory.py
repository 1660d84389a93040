"""Write small intersphinx inventories so that offline builds still link to upstream docs.

Sphinx tries each project's online ``objects.inv`` first; when the network is out of
reach it falls back to the file written here, which lists the upstream objects our
docstrings mention. Entries are ``name: (role, relative URI)``; ``$`` stands for the name.
"""

from __future__ import annotations

import zlib
from pathlib import Path

OBJECTS: dict[str, dict[str, tuple[str, str]]] = {
    "python": {
        "int": ("py:class", "library/functions.html#int"),
        "float": ("py:class", "library/functions.html#float"),
        "str": ("py:class", "library/stdtypes.html#str"),
        "bool": ("py:class", "library/functions.html#bool"),
        "dict": ("py:class", "library/stdtypes.html#dict"),
        "list": ("py:class", "library/stdtypes.html#list"),
        "tuple": ("py:class", "library/stdtypes.html#tuple"),
        "frozenset": ("py:class", "library/stdtypes.html#frozenset"),
        "object": ("py:class", "library/functions.html#object"),
        "None": ("py:data", "library/constants.html#None"),
        "ValueError": ("py:exception", "library/exceptions.html#ValueError"),
        "TypeError": ("py:exception", "library/exceptions.html#TypeError"),
        "KeyError": ("py:exception", "library/exceptions.html#KeyError"),
        "IndexError": ("py:exception", "library/exceptions.html#IndexError"),
        "RuntimeError": ("py:exception", "library/exceptions.html#RuntimeError"),
        "pathlib.Path": ("py:class", "library/pathlib.html#pathlib.Path"),
        "os.PathLike": ("py:class", "library/os.html#os.PathLike"),
        "collections.abc.Callable": ("py:class", "library/collections.abc.html#$"),
        "collections.abc.Sequence": ("py:class", "library/collections.abc.html#$"),
        "collections.abc.Mapping": ("py:class", "library/collections.abc.html#$"),
        "collections.abc.Iterable": ("py:class", "library/collections.abc.html#$"),
        "collections.abc.Iterator": ("py:class", "library/collections.abc.html#$"),
        "typing.Any": ("py:data", "library/typing.html#$"),
        "typing.Literal": ("py:data", "library/typing.html#$"),
        "dataclasses.dataclass": ("py:function", "library/dataclasses.html#$"),
        "fnmatch.fnmatch": ("py:function", "library/fnmatch.html#$"),
    },
    "torch": {
        "torch.Tensor": ("py:class", "tensors.html#$"),
        "torch.dtype": ("py:class", "tensor_attributes.html#$"),
        "torch.device": ("py:class", "tensor_attributes.html#$"),
        "torch.Generator": ("py:class", "generated/$.html#$"),
        "torch.nn.Module": ("py:class", "generated/$.html#$"),
        # autodoc names nn.Module by its defining module in signatures and bases.
        "torch.nn.modules.module.Module": (
            "py:class",
            "generated/torch.nn.Module.html#torch.nn.Module",
        ),
        "torch.nn.functional.normalize": ("py:function", "generated/$.html#$"),
        "torch.nn.Sequential": ("py:class", "generated/$.html#$"),
        "torch.nn.modules.container.Sequential": (
            "py:class",
            "generated/torch.nn.Sequential.html#torch.nn.Sequential",
        ),
        "torch.nn.AdaptiveAvgPool2d": ("py:class", "generated/$.html#$"),
        "torch.set_num_threads": ("py:function", "generated/$.html#$"),
        "torch.nn.functional.cross_entropy": ("py:function", "generated/$.html#$"),
        "torch.utils.data.dataset.Dataset": ("py:class", "data.html#torch.utils.data.Dataset"),
        "torch.utils.data.dataloader.DataLoader": (
            "py:class",
            "data.html#torch.utils.data.DataLoader",
        ),
        "torch.autograd.grad": ("py:function", "generated/$.html#$"),
        "torch.nn.CrossEntropyLoss": ("py:class", "generated/$.html#$"),
        "torch.utils.data.Dataset": ("py:class", "data.html#$"),
        "torch.utils.data.DataLoader": ("py:class", "data.html#$"),
        "torch.autograd.Function": ("py:class", "autograd.html#$"),
        "torch.compiler.disable": ("py:function", "generated/$.html#$"),
        "torch.profiler": ("py:module", "profiler.html#module-$"),
        "torch.Tensor.max": ("py:method", "generated/$.html#$"),
        "torch.distributed.ProcessGroup": ("py:class", "distributed.html#$"),
        "torch.distributed": ("py:module", "distributed.html#module-$"),
        # autodoc spells ProcessGroup by its defining module
        "torch.distributed.distributed_c10d.ProcessGroup": (
            "py:class",
            "distributed.html#torch.distributed.ProcessGroup",
        ),
    },
    "numpy": {
        "numpy.ndarray": ("py:class", "reference/generated/$.html#$"),
        "numpy.memmap": ("py:class", "reference/generated/$.html#$"),
        "numpy.random.SeedSequence": (
            "py:class",
            "reference/random/bit_generators/generated/$.html#$",
        ),
    },
}


def write_inventory(project: str, path: Path) -> None:
    """Write the version-2 ``objects.inv`` of ``project`` to ``path``."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    lines = [
        f"{name} {role} 1 {uri.replace('$', name)} -\n"
        for name, (role, uri) in sorted(OBJECTS[project].items())
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + zlib.compress("".join(lines).encode()))
