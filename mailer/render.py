"""Rendering a campaign once (DESIGN.md §3 "Messages", §4 last bullet).

`compile_campaign` renders the marketer's subject, preheader and body, turns the Markdown
body into HTML and text, renders the layout of the campaign's kind (`templates/email/`),
and inlines the CSS with premailer, all ONCE. Per-recipient values are left as unique
placeholders, which `CompiledCampaign.build` (mailer/message.py) fills per recipient.

What the subject, preheader and body may use (Jinja2 syntax, sandboxed, strict):

    per recipient   name, first_name, email,
                    contact.name, contact.first_name, contact.email,
                    contact.attributes.KEY / contact.attributes["KEY"]  (also attributes.KEY),
                    unsubscribe_url
    per campaign    brand, sponsor, survey_url

A custom attribute a contact lacks is the empty string (the CSV leaves blanks too), so
`{{ contact.attributes.city | default("your town") }}` gives a fallback; `default` also
replaces an empty value. Per-recipient values may take the filters `default`/`d`, `upper`,
`lower`, `title`, `capitalize`, `trim`, `urlencode` and `escape`/`e` (a no-op: values are
always escaped for where they land); they cannot be tested (`{% if name %}`), compared or
sliced, because they are only known when each message is built. Values are HTML-escaped
in the HTML part, written raw in the text part, and percent-encoded inside link URLs.

The body is Markdown (CommonMark, plus tables and strikethrough). Raw HTML is refused
with a TemplateProblem rather than rendered: it would let a body break the layout or hide
the footer, and it would show as tags in the text part; write `\\<` for a literal `<`.
Every compile-time problem (template syntax, unknown variable, raw HTML, a kind's missing
sponsor or survey URL, a bad sender) raises TemplateProblem with one plain line.
"""

from __future__ import annotations

import email.parser
import email.policy
import functools
import html
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

from campaigns.config import Settings
from campaigns.models import Campaign
from campaigns.purposes import Kind, parse_kind
from mailer.message import (
    FILTER_ALIASES,
    FILTERS,
    HTML,
    TEXT,
    URL_IN_HTML,
    URL_IN_TEXT,
    CompiledCampaign,
    Piece,
    Recipient,
    Slot,
    clean,
    parse_sender,
)
from mailer.tokens import TokenSigner

if TYPE_CHECKING:
    from mailer.dkim import DkimSigner

EMAIL_TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "email"
_LAYOUT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


class TemplateProblem(Exception):
    """The campaign cannot be rendered; the message is one line for the marketer."""


class _Misuse(Exception):
    """A per-recipient value used where its value would be needed at compile time."""


# --- placeholders for per-recipient values --------------------------------------------


class _Slots:
    """The per-recipient values one compile uses; slot 0 is the unsubscribe token."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(8)
        self.slots: list[Slot] = []
        self._index: dict[Slot, int] = {}
        self.token_text = str(self.get(Slot("token"), "unsubscribe_url"))
        self.pattern = re.compile(f"ph([xu]){self.nonce}(\\d{{4}})")

    def get(self, slot: Slot, label: str) -> _Value:
        index = self._index.get(slot)
        if index is None:
            if len(self.slots) >= 10_000:
                raise _Misuse("too many different per-recipient values")
            index = self._index[slot] = len(self.slots)
            self.slots.append(slot)
        return _Value(self, slot, label, f"phx{self.nonce}{index:04d}")


class _Value:
    """What a per-recipient variable is at compile time: text that stands for it."""

    __slots__ = ("_label", "_slot", "_slots", "_text")

    def __init__(self, slots: _Slots, slot: Slot, label: str, text: str) -> None:
        self._slots, self._slot, self._label, self._text = slots, slot, label, text

    def __str__(self) -> str:
        return self._text

    def __html__(self) -> str:
        return self._text

    def apply(self, name: str, args: tuple[Any, ...]) -> _Value:
        name = FILTER_ALIASES.get(name, name)
        if name not in FILTERS:
            allowed = ", ".join(sorted(FILTERS))
            raise _Misuse(
                f"the filter {name!r} cannot be used on {self._label}, which differs per "
                f"recipient (usable: {allowed})"
            )
        if name == "default" and (len(args) > 2 or not all(isinstance(a, str) for a in args)):
            raise _Misuse(f"default(...) on {self._label} takes one text argument")
        if name != "default" and args:
            raise _Misuse(f"the filter {name!r} on {self._label} takes no arguments")
        # Arguments become one line like the values, so no filter can add a line break.
        filters = (*self._slot.filters, (name, tuple(clean(a) for a in args[:1])))
        slot = Slot(self._slot.source, self._slot.key, filters)
        return self._slots.get(slot, f"{self._label} | {name}")

    def _refuse(self, *_: object) -> Any:
        raise _Misuse(
            f"{self._label} differs per recipient, so it cannot be tested or compared in the "
            f"template; use a filter such as {{{{ {self._label} | default('…') }}}} instead"
        )

    __bool__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse
    __len__ = __iter__ = __contains__ = _refuse
    __hash__ = object.__hash__


class _Attributes:
    def __init__(self, slots: _Slots, prefix: str) -> None:
        self._slots, self._prefix = slots, prefix

    def __str__(self) -> str:
        raise _Misuse(f"{self._prefix} cannot be shown whole; use {self._prefix}.NAME")

    def __getitem__(self, key: object) -> _Value:
        key = str(key)
        return self._slots.get(Slot("attr", key), f"{self._prefix}.{key}")

    def __getattr__(self, key: str) -> _Value:
        if key.startswith("_"):
            raise AttributeError(key)
        return self[key]


class _Contact:
    def __init__(self, slots: _Slots) -> None:
        self._slots = slots
        self.name = slots.get(Slot("name"), "contact.name")
        self.first_name = slots.get(Slot("first_name"), "contact.first_name")
        self.email = slots.get(Slot("email"), "contact.email")
        self.attributes = _Attributes(slots, "contact.attributes")

    def __str__(self) -> str:
        raise _Misuse("contact cannot be shown whole; use contact.name, contact.email, …")


class _Undefined(jinja2.StrictUndefined):
    @property
    def _undefined_message(self) -> str:
        if isinstance(self._undefined_obj, _Contact):
            return (
                f"contact has no field {self._undefined_name!r} (a custom attribute is "
                f"contact.attributes.{self._undefined_name})"
            )
        if isinstance(self._undefined_obj, _Value):
            return f"{self._undefined_obj._label} has no attribute {self._undefined_name!r}"
        return super()._undefined_message


def _guard(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that hands per-recipient values to `_Value.apply` instead of running."""
    first = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if len(args) > first and isinstance(args[first], _Value):
            if kwargs:
                raise _Misuse(f"the filter {name!r} takes no keyword arguments here")
            return args[first].apply(name, args[first + 1 :])
        for arg in (*args[first + 1 :], *kwargs.values()):
            if isinstance(arg, _Value):
                raise _Misuse(f"{arg._label} cannot be an argument of the filter {name!r}")
        return func(*args, **kwargs)

    return guarded


@functools.cache
def _body_env() -> SandboxedEnvironment:
    # Sandboxed: a body is data typed in a terminal, not code we wrote.
    env = SandboxedEnvironment(undefined=_Undefined, autoescape=False, keep_trailing_newline=True)
    env.filters = {name: _guard(name, f) for name, f in env.filters.items()}
    return env


@functools.cache
def _layout_env(dirs: tuple[str, ...]) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([*dirs, str(EMAIL_TEMPLATES)]),
        undefined=_Undefined,
        autoescape=jinja2.select_autoescape(["html"], default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


# --- Markdown ---------------------------------------------------------------------------

_MD = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


def _check_no_html(tokens: list[Token]) -> None:
    line = 0
    for tok in tokens:
        line = tok.map[0] + 1 if tok.map else line
        raw = [tok] if tok.type == "html_block" else []
        raw += [c for c in tok.children or [] if c.type == "html_inline"]
        if raw:
            snippet = clean(raw[0].content)[:40]
            raise TemplateProblem(
                f"the body has raw HTML on line {line} ({snippet}); write Markdown instead, "
                "or \\< for a literal '<'"
            )


class _TextWriter:
    """Markdown tokens to readable plain text: Markdown-ish, links as `text (url)`."""

    def __init__(self, mark_url: Callable[[str], str]) -> None:
        self.lines: list[str] = []
        # One entry per open container: [first-line prefix, later-line prefix].
        self.stack: list[list[str]] = []
        self.counters: list[int | None] = []
        self.mark_url = mark_url

    def _blank(self) -> None:
        if self.lines and self.lines[-1].strip(" >"):
            self.lines.append("".join(e[1] for e in self.stack).rstrip())

    def _emit(self, text: str) -> None:
        for line in text.split("\n"):
            prefix = ""
            for entry in self.stack:
                prefix += entry[0]
                entry[0] = entry[1]  # a list marker shows on the item's first line only
            self.lines.append((prefix + line).rstrip())

    def inline(self, children: list[Token]) -> str:
        out: list[str] = []
        links: list[tuple[str, int]] = []
        for c in children:
            if c.type == "text":
                out.append(c.content)
            elif c.type in ("softbreak", "hardbreak"):
                out.append("\n")
            elif c.type == "code_inline":
                out.append(f"`{c.content}`")
            elif c.type in ("em_open", "em_close", "strong_open", "strong_close"):
                out.append(c.markup)
            elif c.type in ("s_open", "s_close"):
                out.append("~~")
            elif c.type == "link_open":
                links.append((str(c.attrs.get("href", "")), len(out)))
            elif c.type == "link_close" and links:
                href, start = links.pop()
                label = "".join(out[start:])
                if c.markup == "autolink":
                    del out[start:]
                    out.append(label if href.startswith("mailto:") else self.mark_url(href))
                elif label.strip() != href:
                    out.append(f" ({self.mark_url(href)})")
            elif c.type == "image":
                out.append(c.content or self.mark_url(str(c.attrs.get("src", ""))))
        return "".join(out)

    def render(self, tokens: list[Token]) -> str:
        new_table = False
        for i, tok in enumerate(tokens):
            t = tok.type
            if t in ("bullet_list_open", "ordered_list_open"):
                if not self.stack:
                    self._blank()
                start = tok.attrs.get("start", 1) if t == "ordered_list_open" else None
                self.counters.append(int(start) if start is not None else None)
            elif t in ("bullet_list_close", "ordered_list_close"):
                self.counters.pop()
            elif t == "list_item_open":
                count = self.counters[-1]
                marker = f"{count}. " if count is not None else "- "
                if count is not None:
                    self.counters[-1] = count + 1
                self.stack.append([marker, " " * len(marker)])
            elif t == "blockquote_open":
                self._blank()
                self.stack.append(["> ", "> "])
            elif t in ("list_item_close", "blockquote_close"):
                self.stack.pop()
            elif t in ("paragraph_open", "heading_open"):
                if not tok.hidden:  # hidden: a paragraph of a tight list
                    self._blank()
                prefix = tok.markup + " " if t == "heading_open" else ""
                self._emit(prefix + self.inline(tokens[i + 1].children or []))
            elif t in ("fence", "code_block"):
                self._blank()
                self._emit("\n".join("    " + x for x in tok.content.rstrip("\n").split("\n")))
            elif t == "hr":
                self._blank()
                self._emit("----")
            elif t == "table_open":
                new_table = True
            elif t == "tr_open":
                if new_table:
                    self._blank()
                    new_table = False
                cells = []
                for cell in tokens[i + 1 :]:
                    if cell.type == "tr_close":
                        break
                    if cell.type == "inline":
                        cells.append(self.inline(cell.children or []))
                self._emit(" | ".join(cells))
        return "\n".join(self.lines).strip("\n") + "\n"


def markdown_parts(source: str, mark_url: Callable[[str], str]) -> tuple[str, str]:
    """(HTML, text) of a Markdown body; raw HTML raises TemplateProblem."""
    tokens = _MD.parse(source)
    _check_no_html(tokens)
    return _MD.renderer.render(tokens, _MD.options, {}), _TextWriter(mark_url).render(tokens)


# --- compiling --------------------------------------------------------------------------


def _problem(where: str, exc: BaseException) -> TemplateProblem:
    """A one-line message naming the template and line of a Jinja2 or misuse error."""
    if isinstance(exc, jinja2.TemplateNotFound):
        return TemplateProblem(f"{where}: there is no template named {exc.name!r}")
    name, line = getattr(exc, "name", None), getattr(exc, "lineno", None)
    if not isinstance(exc, jinja2.TemplateSyntaxError):
        tb = exc.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if filename == "<template>" or filename.endswith((".html", ".txt")):
                name, line = Path(filename).name, tb.tb_lineno
            tb = tb.tb_next
    if name and name != "<template>":
        where = f"{where} ({name})"
    detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    at = f" line {line}" if line else ""
    return TemplateProblem(f"{where}{at}: {clean(detail, 300)}")


def _render(where: str, render: Callable[[], str]) -> str:
    try:
        return render()
    except TemplateProblem:
        raise
    except (jinja2.TemplateError, _Misuse, TypeError, ValueError, LookupError) as exc:
        raise _problem(where, exc) from exc


def _slug(name: str, campaign_id: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:50].strip("-")
    return slug or f"campaign-{campaign_id}"


def _kind_checks(kind: Kind, campaign: Campaign) -> None:
    if kind is Kind.THIRD_PARTY_OFFER and not clean(campaign.sponsor):
        raise TemplateProblem("a third-party offer needs a sponsor (the partner it is sent for)")
    if kind is Kind.SURVEY and not re.match(r"https?://\S+$", campaign.survey_url.strip()):
        raise TemplateProblem("a survey needs a survey URL starting with https:// or http://")


def _inline_css(document: str) -> str:
    # Imported here: premailer (with lxml and cssutils) costs ~0.2 s to import, which
    # cron's `send-due` need not pay on the minutes when nothing is due.
    import premailer

    try:
        return premailer.Premailer(
            document,
            allow_network=False,
            disable_link_rewrites=True,
            disable_validation=True,
            strip_important=False,  # the media queries need their !important
            cssutils_logging_level=logging.CRITICAL,
        ).transform()
    except Exception as exc:  # premailer raises plain Exceptions for bad CSS
        raise TemplateProblem(f"inlining the layout's CSS failed: {clean(exc, 200)}") from exc


def _pieces(text: str, slots: _Slots, contexts: dict[str, str]) -> list[Piece]:
    found = list(slots.pattern.finditer(text))
    # A filter or expression that changed a placeholder (e.g. `(name ~ "!") | upper`)
    # would lose the value silently: refuse it.
    if len(re.findall(slots.nonce, text, flags=re.IGNORECASE)) != len(found):
        raise TemplateProblem(
            "a per-recipient value was changed by an expression; apply filters directly "
            "to the value, e.g. {{ name | upper }}"
        )
    out: list[Piece] = []
    pos = 0
    for m in found:
        if m.start() > pos:
            out.append(text[pos : m.start()])
        out.append((int(m.group(2)), contexts[m.group(1)]))
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


def compile_campaign(
    campaign: Campaign,
    settings: Settings,
    *,
    signer: TokenSigner,
    dkim: DkimSigner | None = None,
    template_dirs: Sequence[str | Path] = (),
) -> CompiledCampaign:
    """Render and inline once; raise TemplateProblem for anything the marketer must fix.

    `template_dirs` are searched before the packaged layouts (for a campaign's `template`).
    """
    try:
        kind = parse_kind(campaign.kind)
    except ValueError as exc:
        raise TemplateProblem(str(exc)) from exc
    _kind_checks(kind, campaign)
    layout = campaign.template.strip() or kind.value
    if not _LAYOUT_NAME.fullmatch(layout):
        raise TemplateProblem(f"bad template name {layout!r} (letters, digits, - and _ only)")
    if not clean(settings.postal_address):
        raise TemplateProblem(
            "no postal address is configured (CAMPAIGNS_POSTAL_ADDRESS); every message shows it"
        )
    sender = campaign.sender.strip() or settings.sender
    try:
        parse_sender(sender)
        if settings.reply_to.strip():
            parse_sender(settings.reply_to)
    except ValueError as exc:
        raise TemplateProblem(str(exc)) from exc

    slots = _Slots()
    contact = _Contact(slots)
    campaign_id = campaign.id or 0
    public = clean(settings.public_url).rstrip("/")
    unsubscribe_url = f"{public}/u/{slots.token_text}"
    shared = {
        "brand": clean(settings.brand_name),
        "sponsor": clean(campaign.sponsor),
        "survey_url": campaign.survey_url.strip(),
    }
    body_vars = {
        **shared,
        "name": slots.get(Slot("name"), "name"),
        "first_name": slots.get(Slot("first_name"), "first_name"),
        "email": slots.get(Slot("email"), "email"),
        "contact": contact,
        "attributes": _Attributes(slots, "attributes"),
        "unsubscribe_url": unsubscribe_url,
    }
    env = _body_env()

    def marketer(where: str, source: str) -> str:
        return _render(where, lambda: env.from_string(source).render(body_vars))

    subject = clean(marketer("the subject", campaign.subject))
    preheader = clean(marketer("the preheader", campaign.preheader))
    body = marketer("the body", campaign.body)
    if not subject:
        raise TemplateProblem("the subject is empty")
    if not body.strip():
        raise TemplateProblem("the body is empty")
    if slots.token_text in subject:
        raise TemplateProblem("the subject cannot contain the unsubscribe link")

    def mark_url(url: str) -> str:
        return url.replace(f"phx{slots.nonce}", f"phu{slots.nonce}")

    body_html, body_text = markdown_parts(body, mark_url)
    layout_vars = {
        **shared,
        "kind": kind.value,
        "campaign_name": clean(campaign.name),
        "subject": subject,
        "preheader": preheader,
        "postal_address": clean(settings.postal_address),
        "policy_url": settings.policy_url.strip(),
        "unsubscribe_url": unsubscribe_url,
    }
    lenv = _layout_env(tuple(str(d) for d in template_dirs))
    where = f"the {layout!r} layout"
    document = _render(
        where,
        lambda: lenv.get_template(f"{layout}.html").render(layout_vars, body=Markup(body_html)),
    )
    text = _render(
        where, lambda: lenv.get_template(f"{layout}.txt").render(layout_vars, body=body_text)
    )
    document = _inline_css(document)
    # Placeholders inside link URLs are percent-encoded when filled.
    document = re.sub(r'\b(?:href|src)="[^"]*"', lambda m: mark_url(m.group(0)), document)
    text = re.sub(r"\n{3,}", "\n\n", text.replace("\r\n", "\n")).strip("\n") + "\n"
    for part, content in (("HTML", html.unescape(document)), ("text", text)):
        if f"{slots.nonce}0000" not in content:  # the token, in any context
            raise TemplateProblem(f"the {layout!r} {part} layout has no unsubscribe link")
        if layout_vars["postal_address"] not in content:
            raise TemplateProblem(f"the {layout!r} {part} layout does not show the postal address")

    sender_domain = parse_sender(sender)[1].rpartition("@")[2].lower()
    return CompiledCampaign(
        campaign_id=campaign_id,
        sender=sender,
        reply_to=settings.reply_to,
        subject=_pieces(subject, slots, {"x": TEXT, "u": TEXT}),
        html_part=_pieces(document, slots, {"x": HTML, "u": URL_IN_HTML}),
        text_part=_pieces(text, slots, {"x": TEXT, "u": URL_IN_TEXT}),
        slots=slots.slots,
        signer=signer,
        public_url=public,
        list_id=f"{_slug(campaign.name, campaign_id)}.{sender_domain}",
        list_name=clean(campaign.name),
        return_domain=settings.return_domain,
        boundary=f"=_{slots.nonce}{secrets.token_hex(8)}",
        dkim=dkim,
    )


def preview(
    campaign: Campaign,
    settings: Settings,
    recipient: Recipient,
    signer: TokenSigner,
) -> tuple[bytes, EmailMessage]:
    """One real message for one recipient, and the same parsed back (for preview screens)."""
    raw = compile_campaign(campaign, settings, signer=signer).build(recipient)
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    return raw, cast(EmailMessage, parsed)
