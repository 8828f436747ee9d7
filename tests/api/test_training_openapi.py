"""POST /v1/trainings documents TrainingConfig's own fields: the CLI help texts are the OpenAPI docs."""

from __future__ import annotations


def test_training_request_schema_is_the_config_model(tmp_path):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.api.server import create_app
    from lorastudio.training.config import TrainingConfig

    app = create_app(StudioSettings(models_dir=tmp_path / "models", outdir=tmp_path / "out",
                                    projects_dir=tmp_path / "projects"))
    try:
        body = app.openapi()["paths"]["/v1/trainings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    finally:
        app.state.api.stop()
    props = body["properties"]
    server_decides = {"projects_dir", "models_dir"}
    assert set(props) == set(TrainingConfig.model_fields) - server_decides | {"webhook_url"}
    for name, info in TrainingConfig.model_fields.items():
        if name not in server_decides:
            assert props[name]["description"] == info.description, name
            assert not {"cli", "group", "cli_default"} & set(props[name]), name  # CLI-only keys stay out
    assert set(body["required"]) == {"images", "trigger", "base"}
    assert props["optimizer"]["enum"] == ["adamw", "adamw8bit", "lion", "prodigy", "adafactor"]
