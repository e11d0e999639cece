"""tuneset's Python client: `tuneset.client.Client` (sync) and `AsyncClient`, typed with the API's
own wire types (`service.api.schemas`)."""
