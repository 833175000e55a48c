"""The base class of every configuration section: an unknown key is an error, assignments are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A section of :class:`components.config.Settings` (or a part of one): ``extra="forbid"``, so a
    misspelt key fails at load, naming it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
