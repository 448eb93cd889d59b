"""ACME accounts: ``newAccount`` (with external account binding), account update and
deactivation, the account's orders list and ``keyChange`` (RFC 8555 §7.3, §7.1.2.1)."""

from __future__ import annotations

from flask import Blueprint, Response, request, url_for

from ca.acme import accounts, eab
from ca.acme.errors import AcmeError, malformed
from ca.acme.jws import parse, thumbprint, verify
from ca.store import acme as store
from ca.store.acme import AccountRow
from web.acme.http import AcmeHttp, payload_bool

#: Order URLs per page of an account's orders list (``Link: rel="next"`` beyond).
ORDERS_PAGE_SIZE = 100


def register(bp: Blueprint, h: AcmeHttp) -> None:
    """Add the account routes to ``bp``."""
    h.directory["newAccount"] = "acme.new_account"
    h.directory["keyChange"] = "acme.key_change"

    def account_body(account: AccountRow) -> dict[str, object]:
        orders_url = url_for("acme.account_orders", account_id=account.id, _external=True)
        return accounts.account_json(account, orders_url)

    @bp.post("/new-account")
    def new_account() -> Response:
        jws, _ = h.authenticated("jwk")
        assert jws.jwk is not None and jws.thumbprint is not None
        payload = jws.json()
        a = h.auth()
        only_existing = payload_bool(payload, "onlyReturnExisting")
        existing = store.account_by_thumbprint(a.db, jws.thumbprint)
        if existing is not None:
            if existing.status != "valid":
                raise AcmeError("unauthorized", f"the account of this key is {existing.status}")
            return h.reply(account_body(existing), 200, h.account_url(existing.id))
        if only_existing:
            raise AcmeError("accountDoesNotExist", "no account has this key")
        contact = accounts.check_contact(payload.get("contact") or [])
        agreed = payload_bool(payload, "termsOfServiceAgreed")
        cfg = a.config.acme
        if cfg.terms_of_service_url and not agreed:
            raise malformed("the terms of service must be agreed to (termsOfServiceAgreed)")
        binding = None
        if payload.get("externalAccountBinding") is not None:
            value = payload["externalAccountBinding"]
            binding = eab.check_binding(a.db, a.now(), value, request.url, jws.jwk)
        elif cfg.require_eab:
            raise AcmeError(
                "externalAccountRequired",
                "this CA requires an external account binding: ask its operator for a key id "
                "and HMAC key for your API client",
            )
        done = accounts.find_or_create(
            a.db,
            a.now(),
            jws.jwk,
            jws.thumbprint,
            contact,
            agreed,
            created_ip=request.remote_addr,
            binding=binding,
            accounts_per_ip=cfg.new_accounts_per_ip_per_hour,
        )
        return h.reply(
            account_body(done.account),
            201 if done.created else 200,
            h.account_url(done.account.id),
        )

    @bp.post("/acct/<int:account_id>")
    def account(account_id: int) -> Response:
        jws, acct = h.authenticated("kid")
        assert acct is not None
        if acct.id != account_id:
            raise AcmeError("unauthorized", "the kid is not the account of this URL")
        a = h.auth()
        if not jws.post_as_get:
            payload = jws.json()
            status = payload.get("status")
            if status is not None and status not in ("valid", "deactivated"):
                raise malformed("status may only be set to deactivated")
            contact = payload.get("contact")
            if contact is not None:
                accounts.update_contact(a.db, a.now(), acct, accounts.check_contact(contact))
            if payload_bool(payload, "termsOfServiceAgreed"):
                accounts.agree_to_terms(a.db, a.now(), acct)
            if status == "deactivated":
                accounts.deactivate(a.db, a.now(), acct)
        current = store.get_account(a.db, acct.id)
        assert current is not None
        return h.reply(account_body(current), 200, h.account_url(acct.id))

    @bp.post("/acct/<int:account_id>/orders")
    def account_orders(account_id: int) -> Response:
        """RFC 8555 §7.1.2.1: the URLs of the account's orders that are not invalid, by age,
        ``ORDERS_PAGE_SIZE`` per page (``?cursor=`` the last order id of the previous page)."""
        jws, acct = h.authenticated("kid")
        assert acct is not None
        if acct.id != account_id:
            raise AcmeError("unauthorized", "only the account itself may list its orders")
        if not jws.post_as_get:
            raise malformed("the orders list is read with POST-as-GET (an empty payload)")
        cursor = request.args.get("cursor", "0")
        if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
            raise malformed("cursor must be the cursor of a next link")
        a = h.auth()
        ids = store.account_order_ids(a.db, acct.id, a.now(), int(cursor), ORDERS_PAGE_SIZE + 1)
        page = ids[:ORDERS_PAGE_SIZE]
        resp = h.reply({"orders": [h.order_url(i) for i in page]}, 200)
        if len(ids) > ORDERS_PAGE_SIZE:
            more = url_for(
                "acme.account_orders", account_id=acct.id, cursor=page[-1], _external=True
            )
            resp.headers["Link"] = f'{h.index_link()}, <{more}>;rel="next"'
        return resp

    @bp.post("/key-change")
    def key_change() -> Response:
        outer, acct = h.authenticated("kid")
        assert acct is not None and outer.kid is not None
        a = h.auth()
        # RFC 8555 §7.3.5: the payload is a JWS by the new key, with a jwk, no nonce, same url.
        inner = parse(outer.payload, request.url, a.config.acme.max_jws_bytes, inner=True)
        if inner.jwk is None or inner.thumbprint is None:
            raise malformed("the inner JWS must carry the new key as jwk")
        verify(inner)
        body = inner.json()
        if body.get("account") != outer.kid:
            raise AcmeError("unauthorized", "the inner account is not the outer kid")
        old_key = body.get("oldKey")
        if not isinstance(old_key, dict):
            raise malformed("the inner payload needs oldKey (a JWK)")
        try:
            old_thumb = thumbprint(old_key)
        except AcmeError:
            raise malformed("oldKey is not a valid public JWK") from None
        if old_thumb != acct.key_thumbprint:
            raise AcmeError("unauthorized", "oldKey is not the account's current key")
        if inner.thumbprint == acct.key_thumbprint:
            raise malformed("the new key is the account's current key")
        accounts.change_key(a.db, a.now(), acct, inner.jwk, inner.thumbprint)
        current = store.get_account(a.db, acct.id)
        assert current is not None
        return h.reply(account_body(current), 200, h.account_url(acct.id))
