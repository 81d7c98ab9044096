"""Response shapes for the OpenAPI docs; the bodies themselves come from ``Face.to_dict`` (the one wire format)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["BatchResponse", "DetectResponse", "ErrorResponse", "ModelsResponse"]


class LandmarksOut(BaseModel):
    left_eye: list[float] = Field(description="[x, y] in original-image pixels; the image's left")
    right_eye: list[float]
    nose: list[float]
    mouth_left: list[float]
    mouth_right: list[float]


class FaceOut(BaseModel):
    box: list[float] = Field(description="[x1, y1, x2, y2] in original-image pixels")
    score: float
    landmarks: LandmarksOut | None = Field(None, description="absent when landmarks=false")


class ImageInfo(BaseModel):
    width: int
    height: int


class DetectResponse(BaseModel):
    faces: list[FaceOut]
    image: ImageInfo
    model: str
    timings_ms: dict[str, float] = Field(description="receive, decode, queue, preprocess, forward, postprocess, total")


class ErrorDetail(BaseModel):
    location: str = Field(description="where the invalid value is, e.g. query.threshold")
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable, e.g. unsupported_media_type, payload_too_large")
    message: str
    details: list[ErrorDetail] | None = Field(None, description="each invalid value (validation errors only)")


class ErrorResponse(BaseModel):
    error: ErrorBody


class BatchItem(BaseModel):
    index: int
    filename: str | None = None
    faces: list[FaceOut] | None = None
    image: ImageInfo | None = None
    timings_ms: dict[str, float] | None = None
    error: ErrorBody | None = Field(None, description="set instead of faces when this image could not be used")
    status: int = Field(description="the HTTP status this image would have had on its own")


class BatchResponse(BaseModel):
    results: list[BatchItem]
    model: str


class ModelOut(BaseModel):
    name: str
    description: str
    loaded: bool
    default_threshold: float
    default_long_side: int | None
    params_millions: float | None
    wider_face_val_ap: dict[str, float | str] | None
    licence: str


class ReconstructionModelOut(BaseModel):
    name: str
    description: str
    loaded: bool
    vertices: int
    triangles: int
    licence: str


class ReconstructionModels(BaseModel):
    loaded: str | None = Field(description="the 3D model being served; null when 3D is off or still loading")
    models: list[ReconstructionModelOut]


class EngineOut(BaseModel):
    """What runs the served model, and what the engine measured when it picked it."""

    backend: str
    max_batch: int
    reason: str
    forward_ms: dict[str, float]
    replicas: int = 1
    """Model replicas serving it (more than one in the Ray Serve application)."""
    batching: str = "in process"
    """Who batches the images: the server's own batcher, or Ray Serve's ``@serve.batch`` in each replica."""


class ModelsResponse(BaseModel):
    loaded: str
    precision: str
    engine: EngineOut
    models: list[ModelOut]
    reconstruction: ReconstructionModels
