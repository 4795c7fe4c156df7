"""Service settings (environment variables ``TRELLIS_*``; tests pass a ``Settings`` to ``create_app``)."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRELLIS_", extra="ignore")

    project: Path = Field(Path("."), description="Project root (definitions/, feature_repo/).")
    model: str = Field("card_fraud", description="Model definition served.")
    alias: str = Field("champion", description="Registry alias served; moves are picked up without restart.")
    mlflow_uri: str | None = Field(None, description="MLflow registry URI; default <data>/mlflow.db.")
    event_log: str | None = Field(None, description="Event log (a SQLite file or a redis:// URL); default "
                                                    "<data>/event_log.db (trellis.paths.ProjectPaths.event_log).")
    event_log_sync: Literal["full", "normal"] = Field(
        "full", description="full: every acknowledged append is fsynced (survives a power cut); normal: left to "
                            "the OS (survives a killed process, not a power cut).")
    decision_log: str | None = Field(None, description="The decision log's SQLite file; default "
                                                       "<data>/decision_log.db (ProjectPaths.decision_log).")
    decision_log_enabled: bool = Field(True, description="Log every decision durably before answering it.")
    decision_log_sync: Literal["full", "normal"] = Field(
        "normal", description="normal: a decision is in the log (the OS's file cache) before it is answered, so it "
                              "survives a killed service, not a power cut; full: fsynced first (survives a power "
                              "cut; about +0.3 ms per score at concurrency 1 on the bench: README).")
    catch_up_seconds: float = Field(1.0, ge=0, description="How often the online state is brought up to the "
                                                           "event log in the background; 0: only on ingestion.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body; a larger one is a 413 "
                                                              "before it is read.")
    alias_poll_seconds: float = Field(5.0, ge=0, description="How often the alias is re-resolved; 0: never.")
    flags: Path | None = Field(None, description="The flags file (flagd's format; trellis.flags): which version "
                                                 "serves, canary and A/B splits, versions in shadow. Default "
                                                 "<project>/flags/flags.flagd.json when it exists; without one the "
                                                 "alias serves every request.")
    flags_poll_ms: int = Field(500, ge=50, description="How often the flags file is checked for a change.")
    shadow_queue_size: int = Field(1024, ge=1, description="Answers waiting for shadow scoring at most (one thread "
                                                           "scores them); past it, dropped and counted in "
                                                           "trellis_shadow_dropped_total.")
    guardrails_seconds: float = Field(10.0, ge=0, description="How often a running canary is judged against its "
                                                              "model's guardrails (trellis.guardrails) and rolled "
                                                              "back on a breach; 0: never.")
    max_batch: int = Field(1000, ge=1, description="Largest /v1/score/batch or /v1/events batch.")
    max_future_seconds: float = Field(300.0, ge=0, description="How far ahead of the clock a time may be.")
    top_k: int = Field(3, ge=1, description="Reason codes per response.")
    lean_path: bool = Field(True, description="Answer well-formed scoring and write requests on the lean ASGI "
                                              "path (serving.app.LeanPath); False: FastAPI answers every one.")
