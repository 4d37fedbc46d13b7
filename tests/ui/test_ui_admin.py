"""The UI's admin page (registry/ui/admin_pages.py) and token page: an admin adds and deletes rules, sets visibility
and quotas from forms, without a restart; others are refused; bad input is shown on the page; everything lands in
the audit log; the storage page shows a repository's quota."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.api.helpers import push_image
from tests.ui.conftest import PASSWORD, UiFactory, as_user, auth_sections, indexed, post_form, sign_in, text_of


async def test_an_admin_changes_rules_visibility_and_quotas_from_the_ui(ui_factory: UiFactory, htpasswd: Path) -> None:
    root = await ui_factory(auth_sections(htpasswd))
    assert (await sign_in(root, "root")).status_code == 303
    carol = await ui_factory(auth_sections(htpasswd))
    await as_user(root, "root", lambda: push_image(root, "ops/app", "v1"))

    # carol may not pull ops/app until a rule says so.
    carol.auth = ("carol", PASSWORD)
    assert (await carol.get("/v2/ops/app/tags/list")).status_code == 403
    added = await post_form(
        root, "/ui/admin", "/ui/admin/rules", repository="ops/*", users="carol", groups="", action_pull="1"
    )
    assert added.status_code == 303, added.text
    assert (await carol.get("/v2/ops/app/tags/list")).status_code == 403  # another app instance: within a poll
    for _ in range(50):
        if (await carol.get("/v2/ops/app/tags/list")).status_code == 200:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the rule never reached the other instance")
    page = await root.get("/ui/admin")
    assert "ops/*" in text_of(page) and 'class="delete-rule"' in page.text

    refused = await post_form(root, "/ui/admin", "/ui/admin/rules", repository="ops/*", users="carol")
    assert refused.status_code == 400 and "actions" in text_of(refused)  # no action ticked
    bad_quota = await post_form(root, "/ui/admin", "/ui/admin/quotas", repository="ops/*", bytes="lots")
    assert bad_quota.status_code == 400

    assert (await post_form(root, "/ui/admin", "/ui/admin/quotas", repository="ops/*", bytes="1MiB")).status_code == 303
    await indexed(
        root,
        "ops/app",
        headers={"Authorization": "Basic " + __import__("base64").b64encode(b"root:" + PASSWORD.encode()).decode()},
    )
    storage = await root.get("/ui/storage")
    assert "0% of 1.0 MB" in text_of(storage), text_of(storage)[:2000]

    public = await post_form(root, "/ui/admin", "/ui/admin/visibility", repository="ops/app", visibility="public")
    assert public.status_code == 303
    anonymous = await ui_factory(auth_sections(htpasswd))
    for _ in range(50):
        if (await anonymous.get("/v2/ops/app/tags/list")).status_code == 200:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("public never reached the other instance")

    audit = text_of(await root.get("/ui/audit"))
    for action in ("access-rule.create", "quota.set", "visibility.set"):
        assert action in audit, audit


async def test_only_admins_see_the_admin_pages(ui_factory: UiFactory, htpasswd: Path) -> None:
    alice = await ui_factory(auth_sections(htpasswd))
    await sign_in(alice, "alice")
    for path in ("/ui/admin", "/ui/audit"):
        page = await alice.get(path)
        assert page.status_code == 403, (path, page.status_code)
    anonymous = await ui_factory(auth_sections(htpasswd))
    page = await anonymous.get("/ui/admin")
    assert page.status_code in (303, 401)  # sign in first
    tokens = await alice.get("/ui/tokens")
    assert tokens.status_code == 200 and "Personal access tokens" in tokens.text
    made = await post_form(
        alice, "/ui/tokens", "/ui/tokens", name="ci", scopes="repository:team/*:pull", expires_days="7"
    )
    assert made.status_code == 200 and "moorage_pat_" in made.text
    bad = await post_form(alice, "/ui/tokens", "/ui/tokens", name="ci", scopes="nonsense", expires_days="7")
    assert bad.status_code == 400


async def test_the_token_form_refuses_odd_expiries_without_an_error_page(ui_factory: UiFactory, htpasswd: Path) -> None:
    alice = await ui_factory(auth_sections(htpasswd))
    await sign_in(alice, "alice")
    for days in ("²", "0", "-1", "1e3", "99999999"):
        page = await post_form(
            alice, "/ui/tokens", "/ui/tokens", name="x", scopes="repository:team/*:pull", expires_days=days
        )
        assert page.status_code == 400 and "Expiry" in page.text, (days, page.status_code)
