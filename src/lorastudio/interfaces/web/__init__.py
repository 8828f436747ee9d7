"""The web UI: the page at `/` and the small endpoints it needs beside the public API."""

from __future__ import annotations


def web_router():
    from fastapi import APIRouter

    from lorastudio.interfaces.web import dataset_routes, lora_cards, pages, training_aids

    router = APIRouter()
    for sub in (pages.router, dataset_routes.router, training_aids.router, lora_cards.router):
        router.include_router(sub)
    return router
