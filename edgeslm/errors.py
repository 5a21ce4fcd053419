"""Every error edgeslm raises on purpose.

All of them derive from :class:`EdgeSLMError`, so a caller (and the CLI, which turns them into
one-line messages and a non-zero exit) can catch the whole family at once::

    EdgeSLMError
    ├── ModelLoadError              a model file or folder cannot be read
    │   ├── UnknownModelError       a name that is neither a built-in model nor a path
    │   └── UnsupportedArchitectureError
    ├── BackendNotInstalledError    the plugin for a format is not installed (names the extra)
    ├── ExportError                 a converter failed
    │   └── ParityError             the export computes something else than its source
    ├── BundleError                 a bundle directory is missing pieces or is unreadable
    │   ├── BundleIntegrityError    a file's sha256 differs from the manifest
    │   ├── SignatureError          a signature is missing, malformed or does not verify
    │   └── SchemaVersionError      a manifest written by a newer, unknown schema
    ├── TargetError                 an unknown or invalid device target
    │   ├── DoesNotFitError         the model cannot fit the target's memory
    │   ├── UnknownTargetError      (edgeslm.targets.profile) no such target; did-you-mean
    │   └── TargetFileError         (edgeslm.targets.profile) a target TOML that does not validate
    │       ├── MissingFieldError, UnknownFormatError, UnknownPrecisionError, UnitError
    ├── OutputError                 an output folder or file cannot be created
    ├── GenerationError             bad generation input (empty prompt, context overflow ...)
    │   └── ChatTemplateError       a chat template fails to compile or render
    │       └── ChatTemplateLimitError  rendering hit a resource limit (``.limit`` names it)
    ├── EngineOptionError           an engine option the engine does not know or cannot honour
    └── TelemetryError              malformed telemetry, broker trouble
"""

from __future__ import annotations


class EdgeSLMError(Exception):
    """Base class of every error edgeslm raises deliberately."""


class ModelLoadError(EdgeSLMError):
    """A model file or folder is missing, truncated or not what it claims to be."""


class UnknownModelError(ModelLoadError):
    """The name is neither a built-in model nor an existing path."""


class UnsupportedArchitectureError(ModelLoadError):
    """The model's architecture is not one edgeslm can re-author for export."""


class BackendNotInstalledError(EdgeSLMError):
    """No plugin is installed for the requested format or engine."""


class ExportError(EdgeSLMError):
    """A backend's converter failed."""


class ParityError(ExportError):
    """The exported model disagrees with its source beyond the allowed tolerance."""


class BundleError(EdgeSLMError):
    """A bundle directory is missing files or its manifest is unreadable."""


class BundleIntegrityError(BundleError):
    """A bundle file's content does not match the sha256 its manifest records."""


class SignatureError(BundleError):
    """A bundle signature is missing, malformed, or made by an untrusted key."""


class SchemaVersionError(BundleError):
    """A manifest (or message) carries a schema version this edgeslm does not understand."""


class TargetError(EdgeSLMError):
    """An unknown device target, or a target file that does not validate."""


class DoesNotFitError(TargetError):
    """The model, at the chosen precision and context, exceeds the target's memory."""


class OutputError(EdgeSLMError):
    """An output path is a file where a folder is needed, or cannot be created or written."""


class GenerationError(EdgeSLMError):
    """Generation cannot run on the given input (empty prompt, ids out of range, overflow)."""


class EngineOptionError(EdgeSLMError):
    """An engine option the engine does not know, a value of the wrong kind, or a device /
    execution provider the runtime does not have."""


class ChatTemplateError(GenerationError):
    """A chat template does not compile, or fails or refuses while rendering."""


class ChatTemplateLimitError(ChatTemplateError):
    """Rendering a chat template hit a resource limit; ``limit`` names it (``max_output_chars`` ...)."""

    def __init__(self, message: str, limit: str = ""):
        super().__init__(message)
        self.limit = limit


class TelemetryError(EdgeSLMError):
    """Malformed telemetry or a broker that cannot be reached."""
