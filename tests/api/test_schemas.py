"""The answer models are read back by the client: each field is read by the name it is written
under."""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel

from orchestrator.api import schemas


def answer_models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    pending: list[type[BaseModel]] = [schemas.Reply]
    while pending:
        model = pending.pop()
        found.append(model)
        pending.extend(model.__subclasses__())
    return found


def test_every_answer_field_is_read_by_the_name_it_is_written_under() -> None:
    for model in answer_models():
        for name, field in model.model_fields.items():
            written = field.serialization_alias or field.alias or name
            validation = field.validation_alias
            read = (
                set(validation.choices)
                if isinstance(validation, AliasChoices)
                else {validation or field.alias or name}
            )
            assert written in read, (model.__name__, name, written, read)


def test_a_device_answer_reads_back_as_it_was_written() -> None:
    device = schemas.DeviceOut(
        id="d",
        name="n",
        description="",
        brand="Custom",
        model="Custom",
        avatar="",
        last_seen="0001-01-01T00:00:00Z",
        tags=[],
        source="mqtt",
        created_at="2026-01-01T00:00:00Z",
        metadata=schemas.DeviceMetadata(device_id="d"),
        project_id="p",
    )
    written = device.model_dump(mode="json", by_alias=True)
    assert written["projectId"] == "p"
    assert schemas.DeviceOut.model_validate(written) == device
