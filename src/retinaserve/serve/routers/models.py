"""The registry as the server sees it: every registered model, and which one is loaded."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...registry import get_model_spec, get_reconstruction_spec, list_models
from ..dependencies import ServiceDep, SettingsDep, require_api_key
from ..schemas import ModelsResponse

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", summary="Registered models and the one being served", response_model=ModelsResponse)
async def models(request: Request, service: ServiceDep, settings: SettingsDep) -> dict[str, object]:
    out = []
    for name in list_models("detection"):
        spec = get_model_spec(name)
        acc = spec.accuracy
        out.append(
            {
                "name": name,
                "description": spec.description,
                "loaded": name == service.model_name,
                "default_threshold": spec.default_threshold,
                "default_long_side": spec.default_long_side,
                "params_millions": spec.params_millions,
                "wider_face_val_ap": (
                    {"easy": acc.easy, "medium": acc.medium, "hard": acc.hard, "protocol": acc.protocol}
                    if acc
                    else None
                ),
                "licence": spec.weights.licence,
            }
        )
    reconstruction = getattr(request.app.state, "reconstruction", None)
    loaded_3d = reconstruction.model_name if reconstruction is not None and reconstruction.ready else None
    models_3d = []
    for name in list_models("reconstruction"):
        spec3d = get_reconstruction_spec(name)
        models_3d.append(
            {
                "name": name,
                "description": spec3d.description,
                "loaded": name == loaded_3d,
                "vertices": spec3d.vertices,
                "triangles": spec3d.triangles,
                "licence": spec3d.licence_note,
            }
        )
    return {
        "loaded": service.model_name,
        "precision": settings.precision,
        "engine": service.engine,
        "models": out,
        "reconstruction": {"loaded": loaded_3d, "models": models_3d},
    }
