"""The /items resource: CRUD on the database, and a clear 4xx for every bad request."""

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.project_slug }}.items import service
from {{ cookiecutter.project_slug }}.items.models import Item
from {{ cookiecutter.project_slug }}.items.schemas import ItemIn
from {{ cookiecutter.project_slug }}.main import create_app
from {{ cookiecutter.project_slug }}.settings import Settings

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}
WIDGET = {"name": "widget", "description": "a small thing", "price_cents": 250}


async def test_created_item_can_be_read_back(client: httpx.AsyncClient) -> None:
    created = await client.post("/items", json=WIDGET)

    assert created.status_code == 201
    read = await client.get(f"/items/{created.json()['id']}")
    assert read.status_code == 200
    assert read.json() == created.json()
    assert read.json()["name"] == "widget"


async def test_list_is_paginated_in_creation_order(client: httpx.AsyncClient) -> None:
    for n in range(5):
        await client.post("/items", json={"name": f"item {n}", "price_cents": n})

    page = await client.get("/items", params={"limit": 2, "offset": 2})

    assert page.status_code == 200
    assert [item["name"] for item in page.json()["items"]] == ["item 2", "item 3"]
    assert page.json()["total"] == 5


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"offset": -1}])
async def test_page_bounds_are_enforced(client: httpx.AsyncClient, params: dict[str, int]) -> None:
    response = await client.get("/items", params=params)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", next(iter(params))]


async def test_a_whole_number_written_as_a_float_is_an_integer(client: httpx.AsyncClient) -> None:
    created = await client.post("/items", json={"name": "float", "price_cents": 207.0})

    assert created.status_code == 201
    assert created.json()["price_cents"] == 207


async def test_replace_changes_every_field(client: httpx.AsyncClient) -> None:
    item_id = (await client.post("/items", json=WIDGET)).json()["id"]

    replaced = await client.put(f"/items/{item_id}", json={"name": "gadget", "price_cents": 9})

    assert replaced.status_code == 200
    assert replaced.json()["name"] == "gadget"
    assert replaced.json()["description"] is None
    assert (await client.get(f"/items/{item_id}")).json()["price_cents"] == 9


async def test_deleted_item_is_gone(client: httpx.AsyncClient) -> None:
    item_id = (await client.post("/items", json=WIDGET)).json()["id"]

    deleted = await client.delete(f"/items/{item_id}")

    assert deleted.status_code == 204
    assert (await client.get(f"/items/{item_id}")).status_code == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_unknown_item_is_404_naming_it(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, "/items/4242", json=WIDGET)

    assert response.status_code == 404
    assert response.json() == {"detail": "item 4242 does not exist"}


async def test_duplicate_name_is_409_and_writes_nothing(client: httpx.AsyncClient) -> None:
    await client.post("/items", json=WIDGET)

    duplicate = await client.post("/items", json={**WIDGET, "price_cents": 1})

    assert duplicate.status_code == 409
    assert "widget" in duplicate.json()["detail"]
    assert (await client.get("/items")).json()["total"] == 1


async def test_renaming_onto_a_taken_name_is_409_and_leaves_the_item_intact(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/items", json=WIDGET)
    other = (await client.post("/items", json={"name": "other", "price_cents": 1})).json()

    clash = await client.put(f"/items/{other['id']}", json={**WIDGET, "price_cents": 7})

    assert clash.status_code == 409
    assert (await client.get(f"/items/{other['id']}")).json() == other


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/items", content=b'{"name": "broken', headers=JSON)

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"price_cents": 1}, "name"),
        ({"name": "", "price_cents": 1}, "name"),
        ({"name": "x" * 101, "price_cents": 1}, "name"),
        ({"name": "nul\x00byte", "price_cents": 1}, "name"),
        ({"name": "negative", "price_cents": -1}, "price_cents"),
        ({"name": "huge", "price_cents": 2**40}, "price_cents"),
        ({"name": "boolean", "price_cents": True}, "price_cents"),
        ({"name": "text", "price_cents": "12"}, "price_cents"),
        ({"name": "fraction", "price_cents": 1.5}, "price_cents"),
        ({"name": "extra", "price_cents": 1, "colour": "red"}, "colour"),
    ],
)
async def test_invalid_body_is_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await client.post("/items", json=body)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == field
    assert (await client.get("/items")).json()["total"] == 0


async def test_lone_surrogate_in_text_is_422(client: httpx.AsyncClient) -> None:
    # Valid JSON, but not text a database can store.
    body = b'{"name": "lone \\ud800 surrogate", "price_cents": 1}'

    response = await client.post("/items", content=body, headers=JSON)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]


async def test_out_of_range_id_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/items/{2**63}")

    assert response.status_code == 422


async def test_body_over_the_limit_is_413(settings: Settings) -> None:
    app: FastAPI = create_app(settings.model_copy(update={"max_body_size": 64}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post("/items", json={**WIDGET, "description": "x" * 100})

    assert response.status_code == 413
    assert "Too Large" in response.text


async def test_replacing_an_item_deleted_meanwhile_is_404(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    item_id = (await client.post("/items", json=WIDGET)).json()["id"]
    async with app.state.sessions() as slow, app.state.sessions() as fast:
        read = await slow.get(Item, item_id)  # the slow request has read the item...
        await service.delete_item(fast, item_id)  # ...when a faster one deletes it

        with pytest.raises(service.ItemNotFound):
            await service.replace_item(slow, item_id, ItemIn(name="late", price_cents=1))
        assert read is not None

    assert (await client.get(f"/items/{item_id}")).status_code == 404
