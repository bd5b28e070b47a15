"""Paged, searchable lists of users, backends and scripts (mixed into the Query root).

The contract's plain lists (`users`, `backends`, `scripts`) stay; these add cursor pagination in
the shape of `requestLogs`: `items`, `totalCount`, `nextCursor` (pass it back as `after`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import strawberry
from strawberry.types import Info

from graphql_schema.context import AdminContext
from graphql_schema.errors import bad_input
from graphql_schema.types import BackendType, RequestLogEntry, ScriptObjectType, ScriptTypeEnum, UserType, page_size
from router.models.analytics import RequestLog as RequestLogModel
from router.models.core import ScriptType as ModelScriptType
from router.services import Page

Ctx = Info[AdminContext, None]
P = TypeVar("P")

SEARCH_DESCRIPTION = "Only rows containing this text (case-insensitive) in {fields}; at most 200 characters."
FIRST_DESCRIPTION = "Page size: 1 to the server's maximum page (500), default 50."
AFTER_DESCRIPTION = "The nextCursor of the previous page (absent: the first page)."
ACTIVE_DESCRIPTION = "true: only active ones; false: only inactive ones; absent: both."


def search_argument(fields: str) -> object:
    return strawberry.argument(description=SEARCH_DESCRIPTION.format(fields=fields))


UserSearch = Annotated[str | None, search_argument("name or e-mail")]
BackendSearch = Annotated[str | None, search_argument("name or base URL")]
ScriptSearch = Annotated[str | None, search_argument("name")]
Active = Annotated[bool | None, strawberry.argument(description=ACTIVE_DESCRIPTION)]
First = Annotated[int | None, strawberry.argument(description=FIRST_DESCRIPTION)]
After = Annotated[str | None, strawberry.argument(description=AFTER_DESCRIPTION)]
OfType = Annotated[ScriptTypeEnum | None, strawberry.argument(description="Only scripts of this type.")]


def encode_page_cursor(kind: str, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{row_id}".encode()).decode()


def decode_page_cursor(kind: str, cursor: str) -> int:
    """The id a cursor of this kind continues after (BAD_USER_INPUT naming `after` otherwise)."""
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        prefix, _, row_id = text.partition(":")
        if prefix != kind:
            raise ValueError(cursor)
        return int(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_input(f"after is not a cursor of this list ({kind}s)", "after") from None


def _after(kind: str, after: str | None) -> int | None:
    return decode_page_cursor(kind, after) if after else None


def _page_of(page_type: Callable[..., P], kind: str, page: Page, convert: Callable[[Any], Any]) -> P:
    """One GraphQL page of `kind`s: its rows converted, the total count and the cursor after its last row."""
    next_cursor = encode_page_cursor(kind, page.next_after_id) if page.next_after_id is not None else None
    return page_type(items=[convert(row) for row in page.items], total_count=page.total_count, next_cursor=next_cursor)


@strawberry.type(description="One page of users, oldest first.")
class UserPage:
    items: list[UserType] = strawberry.field(description="The users of this page, in id order (oldest first).")
    total_count: int = strawberry.field(description="How many users match the search and filter, in all pages.")
    next_cursor: str | None = strawberry.field(description="Pass as `after` for the next page; null on the last page.")


@strawberry.type(description="One page of backends, oldest first.")
class BackendPage:
    items: list[BackendType] = strawberry.field(description="The backends of this page, in id order (oldest first).")
    total_count: int = strawberry.field(description="How many backends match the search and filter, in all pages.")
    next_cursor: str | None = strawberry.field(description="Pass as `after` for the next page; null on the last page.")


@strawberry.type(description="One page of scripts, oldest first.")
class ScriptPage:
    items: list[ScriptObjectType] = strawberry.field(
        description="The scripts of this page, in id order (oldest first)."
    )
    total_count: int = strawberry.field(description="How many scripts match the search and filters, in all pages.")
    next_cursor: str | None = strawberry.field(description="Pass as `after` for the next page; null on the last page.")


@strawberry.type
class PageQuery:
    @strawberry.field(
        description="One request-log row, by its id or by the X-Request-ID the client got (the newest row with "
        "that request id); null if there is none. For a detail view: attempts and attemptErrors, tokens, cost, "
        "timings."
    )
    async def request_log(
        self, id: strawberry.ID | None = None, request_id: str | None = None
    ) -> RequestLogEntry | None:
        if (id is None) == (request_id is None):
            raise bad_input("give exactly one of id and requestId", "id")
        if id is not None:
            if not str(id).isdigit() or len(str(id)) > 19:
                raise bad_input(f"id must be a request-log id, got {id!r}", "id")
            row = await RequestLogModel.get_or_none(id=int(id))
        else:
            row = await RequestLogModel.filter(request_id=request_id).order_by("-id").first()
        return RequestLogEntry.from_row(row) if row is not None else None

    @strawberry.field(description="Users a page at a time, searchable by name and e-mail.")
    async def users_page(
        self,
        info: Ctx,
        search: UserSearch = None,
        active: Active = None,
        first: First = None,
        after: After = None,
    ) -> UserPage:
        after_id = _after("user", after)
        page = await info.context.admin.page_users(search, page_size(info, first), after_id, active)
        return _page_of(UserPage, "user", page, UserType.from_model)

    @strawberry.field(description="Backends a page at a time, searchable by name and base URL.")
    async def backends_page(
        self,
        info: Ctx,
        search: BackendSearch = None,
        active: Active = None,
        first: First = None,
        after: After = None,
    ) -> BackendPage:
        after_id = _after("backend", after)
        page = await info.context.admin.page_backends(search, page_size(info, first), after_id, active)
        return _page_of(BackendPage, "backend", page, BackendType.from_model)

    @strawberry.field(description="Scripts a page at a time, searchable by name, optionally of one type.")
    async def scripts_page(
        self,
        info: Ctx,
        search: ScriptSearch = None,
        type: OfType = None,
        active: Active = None,
        first: First = None,
        after: After = None,
    ) -> ScriptPage:
        after_id = _after("script", after)
        script_type = ModelScriptType(type.value) if type is not None else None
        page = await info.context.admin.page_scripts(search, page_size(info, first), after_id, script_type, active)
        return _page_of(ScriptPage, "script", page, ScriptObjectType.from_model)
