"""Datasets: create, list (newest first, cursor pagination), get with counts, delete with their blobs."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from service.api import Services
from service.api.errors import not_found, problems
from service.api.schemas import CURSOR_PATTERN, Dataset, DatasetCreate, DatasetPage, Order
from service.jobs import TERMINAL
from service.store.blobs import job_prefix
from service.times import rfc3339

Limit = Annotated[int, QueryParameter(ge=1, le=200, description="page size")]
Cursor = Annotated[
    str | None, QueryParameter(pattern=CURSOR_PATTERN, description="next_cursor of the previous page")
]
OrderQuery = Annotated[
    Order, QueryParameter(description="desc: newest first (the default); asc: oldest first")
]


def page_ids(
    services: Services, tenant: str, what: str, cursor: str | None, limit: int, order: Order = "desc"
) -> tuple[list[str], str | None]:
    """One page of ids in `order`, and the cursor of the next page (None on the last)."""
    ids = services.state.list_ids(tenant, what, cursor, limit + 1, newest_first=order == "desc")
    if len(ids) > limit:
        return ids[:limit], ids[limit - 1]
    return ids, None


def dataset_out(ds: dict[str, Any]) -> Dataset:
    return msgspec.convert({**ds, "created_at": rfc3339(ds["created_at"])}, Dataset)


class DatasetController(Controller):
    path = "/datasets"
    tags = ("datasets",)

    @post(operation_id="createDataset", status_code=201, sync_to_thread=True, responses=problems(401))
    def create_dataset(
        self, data: JSONBody[DatasetCreate], tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> Response[Dataset]:
        """Create an empty dataset of chat or preference examples."""
        ds = services.state.create_dataset(tenant, data.name, data.kind, data.description)
        return Response(dataset_out(ds), status_code=201, headers={"Location": f"/v1/datasets/{ds['id']}"})

    @get(operation_id="listDatasets", sync_to_thread=True, responses=problems(401))
    def list_datasets(
        self,
        tenant: NamedDependency[str],
        services: NamedDependency[Services],
        cursor: Cursor = None,
        limit: Limit = 50,
        order: OrderQuery = "desc",
    ) -> DatasetPage:
        """The tenant's datasets, newest first (`order=asc`: oldest first)."""
        ids, next_cursor = page_ids(services, tenant, "datasets", cursor, limit, order)
        items = [dataset_out(ds) for i in ids if (ds := services.state.get_dataset(tenant, i)) is not None]
        return DatasetPage(items=items, next_cursor=next_cursor)

    @get("/{dataset_id:str}", operation_id="getDataset", sync_to_thread=True, responses=problems(401, 404))
    def get_dataset(
        self, dataset_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> Dataset:
        """One dataset with its counts: batches, examples, bytes."""
        ds = services.state.get_dataset(tenant, dataset_id)
        if ds is None:
            raise not_found("dataset", dataset_id)
        return dataset_out(ds)

    @delete(
        "/{dataset_id:str}", operation_id="deleteDataset", sync_to_thread=True, responses=problems(401, 404)
    )
    def delete_dataset(
        self, dataset_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> None:
        """Delete a dataset, every blob of its batches and every file built from it.

        Builds of it that are still queued or running are cancelled; the job records stay (with
        their counts, and `dataset_deleted` in the result) but list no artifacts and serve none.
        Files already uploaded to a provider, and models trained on them, are the provider's to delete.
        """
        state = services.state
        if state.get_dataset(tenant, dataset_id) is None:
            raise not_found("dataset", dataset_id)
        for job_id in state.delete_dataset(tenant, dataset_id):
            # the files go even when the job's record has already expired (job retention)
            services.blobs.delete_prefix(job_prefix(tenant, job_id))
            job = state.jobs.tenant_job(tenant, job_id)
            if job is None:
                continue
            if job["status"] not in TERMINAL:
                state.jobs.request_cancel(job_id)
            state.jobs.forget_artifacts(job_id)
        # ids have a fixed length, so no other dataset's keys share this prefix
        services.blobs.delete_prefix(f"{tenant}/{dataset_id}/")
