"""What every JSON body a client sends has in common."""

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from .errors import ERRORS_NAMED


class ClientBody(BaseModel):
    """A request body: fields the schema does not name are refused.

    Pydantic reports each unknown field as an error of its own, and building tens of
    thousands of them (one per key of a large object) holds the worker for a long time:
    past a few, they are refused at once, in one error.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_fields(cls, data: Any) -> Any:
        fields = cls.model_fields
        if isinstance(data, dict) and len(data) > len(fields) + ERRORS_NAMED:
            unknown = [key for key in data if key not in fields]
            if len(unknown) > ERRORS_NAMED:
                named = ", ".join(map(repr, unknown[:ERRORS_NAMED]))
                raise ValueError(f"{len(unknown)} unknown fields, the first: {named}")
        return data
