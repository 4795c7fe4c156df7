"""Service settings (environment variables ``TRELLIS_*``; tests pass a ``Settings`` to ``create_app``)."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRELLIS_", extra="ignore")

    project: Path = Field(Path("."), description="Project root (definitions/, feature_repo/).")
    model: str = Field("card_fraud", description="Model definition served.")
    alias: str = Field("champion", description="Registry alias served; moves are picked up without restart.")
    mlflow_uri: str | None = Field(None, description="MLflow registry URI; default <data>/mlflow.db.")
    alias_poll_seconds: float = Field(5.0, ge=0, description="How often the alias is re-resolved; 0: never.")
    max_batch: int = Field(1000, ge=1, description="Largest /v1/score/batch or /v1/events batch.")
    max_future_seconds: float = Field(300.0, ge=0, description="How far ahead of the clock a time may be.")
    top_k: int = Field(3, ge=1, description="Reason codes per response.")
    fast_scoring: bool = Field(True, description="Answer well-formed scoring requests on the lean ASGI path "
                                                 "(serving.app.FastScoring); False: FastAPI answers every one.")
