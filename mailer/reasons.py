"""Read why a message did not arrive, from an SMTP reply or a bounce's diagnostic (issue 14).

`reason_for` decides from the enhanced status code (RFC 3463) first, then the text, the
order DESIGN.md §4 gives, with two guards learnt from real bounces (Sisimai's corpus):

- a text that says the block is about us (a blocklist, reputation, SPF/DKIM/DMARC, spam
  found ...) or that the mailbox is full wins over an address code: "550 5.1.1 ...
  blocked by policy" says nothing about the address, and suppressing the person for it
  would lose them for good;
- a temporary failure (4.x.x, a 4xx reply, `Action: delayed`) never says the address is
  dead, whatever its text.

Codes that say little on their own (x.0.0, x.5.x, x.7.1 ...) leave the decision to the
text, then fall back to what the code says. `Action: failed` alone makes no reason: an
MTA that gave up after days of 4xx replies reports `failed` with `Status: 4.4.7`.
"""

from __future__ import annotations

import re

from campaigns.bounce_reasons import GROUP, Group, Reason

_F = re.IGNORECASE | re.ASCII

# (subject, detail) of an enhanced code -> the reason it states by itself.
_DECISIVE: dict[tuple[int, int], Reason] = {
    (1, 1): Reason.USER_UNKNOWN,  # bad destination mailbox address
    (1, 2): Reason.HOST_UNKNOWN,  # bad destination system address
    (1, 3): Reason.USER_UNKNOWN,  # bad destination mailbox address syntax
    (1, 6): Reason.HAS_MOVED,  # destination mailbox has moved, no forwarding address
    (1, 10): Reason.HOST_UNKNOWN,  # recipient address has null MX (RFC 7505)
    (2, 1): Reason.DISABLED,  # mailbox disabled, not accepting messages
    (2, 2): Reason.MAILBOX_FULL,
    (2, 3): Reason.TOO_BIG,  # message length exceeds administrative limit
    (3, 4): Reason.TOO_BIG,  # message too big for system
    (4, 7): Reason.EXPIRED,  # delivery time expired
    (7, 13): Reason.DISABLED,  # user account disabled (RFC 5248)
    (7, 23): Reason.AUTH_FAILURE,  # SPF validation failed (RFC 7372)
    (7, 24): Reason.AUTH_FAILURE,  # SPF validation error
    (7, 25): Reason.AUTH_FAILURE,  # reverse DNS validation failed
    (7, 26): Reason.AUTH_FAILURE,  # multiple authentication checks failed (Gmail: DMARC)
    (7, 27): Reason.BLOCKED,  # sender address has null MX
    (7, 28): Reason.RATE_LIMITED,  # mail flood detected (RFC 7293)
}
# What a code that says little means when the text says nothing better.
_BY_SUBJECT: dict[int, Reason] = {
    1: Reason.UNKNOWN,  # 1.0, 1.4 (ambiguous), 1.5 ...
    2: Reason.UNKNOWN,
    3: Reason.SYSTEM_ERROR,
    4: Reason.NETWORK_ERROR,
    5: Reason.UNKNOWN,  # protocol status: servers put anything behind 5.5.0
    6: Reason.POLICY,  # media (content) status
    7: Reason.BLOCKED,  # security or policy status
}
_SENDER_SIDE = {(1, 7), (1, 8)}  # our own (sender's) address refused

# The texts, most telling first: the first that matches decides. Sender-side phrases come
# before address ones so that a block mentioning the recipient stays a block.
_TEXTS: tuple[tuple[Reason, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern, _F))
    for reason, pattern in (
        (Reason.VIRUS_DETECTED, r"virus|malware|infected|trojan|worm\b|malicious"),
        (
            Reason.BLOCKED,
            r"spamhaus|spamcop|barracuda|sorbs|dnsbl|\brbl\b|blocklist|blacklist|"
            r"block ?list|black ?list|denylist|(?<!not )listed (?:at|in|on|by)|is listed|"
            r"abuseat|proofpoint|cloudmark|ipremoval|\bcbl\b|sender (?:address )?rejected|"
            r"\bblocked\b|will not accept delivery of this message|"
            r"not accept(?:ing)? (?:this|your) (?:message|mail)|"
            r"client host (?:\S+ )?rejected|helo command rejected|"
            r"your (?:ip|host|server|network|mail server|domain)\b",
        ),
        (Reason.BAD_REPUTATION, r"reputation|unusual rate|sender score"),
        (
            Reason.AUTH_FAILURE,
            r"\bspf\b|dkim|dmarc|sender policy framework|not authenticated|"
            r"unauthenticated|authentication (?:failed|failure|required|check)|"
            r"reverse (?:dns|lookup)|\bptr\b|\brdns\b|hostname (?:lookup|does not resolve)|"
            r"cannot (?:find|resolve) your (?:hostname|address)|ip name lookup failed",
        ),
        (
            Reason.SPAM_DETECTED,
            r"spam|junk|unsolicited|bulk mail|phish|scam|fraud|suspicious|"
            r"content (?:rejected|filter)|message content|looks like|"
            r"score (?:too high|exceeded)",
        ),
        (
            Reason.RELAYING_DENIED,
            r"relay(?:ing)? (?:access )?(?:denied|not (?:permitted|allowed)|prohibited)|"
            r"not permitted to relay|unable to relay|(?:we|i) do not relay|not a gateway|"
            r"relaying (?:is )?(?:denied|disallowed|not)|isn'?t in my list of allowed rcpthosts|"
            r"\bno relaying",
        ),
        (
            Reason.RATE_LIMITED,
            r"rate limit|ratelimit|rate of|too many (?:messages|mails|emails|connections|"
            r"recipients|sessions|concurrent|errors)|sending (?:limit|quota)|"
            r"throttl|exceeded (?:the )?(?:rate|sending|connection)|slow down|"
            r"temporarily deferred due to user complaints|frequency|unexpected volume|"
            r"user complaints|server busy|\[ts0\d\]",
        ),
        (
            Reason.TOO_BIG,
            r"message (?:size|length)|(?:message|mail|email) (?:is )?too (?:big|large|long)|"
            r"exceeds? (?:the )?(?:maximum |max |allowed )?(?:message )?size|size limit|"
            r"maximum (?:message )?size",
        ),
        # Address phrases that read like blocks: Exchange Online's directory-based
        # blocking, Postfix with a recipient table.
        (
            Reason.USER_UNKNOWN,
            r"recipient address rejected: (?:access denied|user unknown|unknown user|"
            r"invalid (?:user|recipient))|recipientnotfound|"
            r"recipnotfound|resolver\.adr\.recip",
        ),
        (Reason.GREYLISTED, r"gr[ae]y ?list|gr[ae]ylisted|please try again in \d"),
        # A DNS lookup that failed for now reads like a dead domain without this.
        (Reason.NETWORK_ERROR, r"not found, try again|temporary (?:dns|lookup) failure"),
        (Reason.HAS_MOVED, r"has moved|moved (?:permanently|to)|no forwarding address"),
        (
            Reason.DISABLED,
            r"(?:account|mailbox|user|address|recipient)(?: has been| is|'s account is)? "
            r"(?:disabled|deactivated|suspended|inactive|closed|terminated|locked|frozen|"
            r"deleted|discontinued|blocked|expired)|(?:disabled|inactive|suspended|closed) "
            r"(?:account|mailbox|user|address)|no longer (?:active|in use|accepts mail)|"
            r"account (?:is )?unavailable|mailbox is inactive",
        ),
        (
            Reason.MAILBOX_FULL,
            r"mail ?box (?:is )?full|over ?quota|quota (?:exceeded|full|limit)|"
            r"exceed(?:s|ed)? (?:\w+ )?(?:storage|quota|mailbox size)|full mailbox|"
            r"mail ?box (?:size limit|exceeded|has exceeded|storage)|not enough (?:space|storage)|"
            r"mailbox.{0,40}\bfull\b|user.{0,20}over.{0,10}quota|insufficient (?:disk )?space",
        ),
        (
            Reason.HOST_UNKNOWN,
            r"host (?:unknown|not found)|unknown host|find any host|no host by that name|"
            r"host \S+ not found|"
            r"(?:domain|host) (?:name )?"
            r"(?:not found|does not exist|doesn't exist|unknown|is not valid|lookup failed)|"
            r"no such domain|non-?existent (?:domain|host)|unrouteable (?:mail )?domain|"
            r"no (?:valid )?mx|null mx|does not accept (?:any )?mail|name service error|"
            r"domain .{0,60}(?:isn't|is not|not) (?:valid|in use|exist)|"
            r"unknown domain|invalid domain|bad destination system|dns.{0,20}nxdomain|"
            r"indicated no smtp service",
        ),
        (
            Reason.USER_UNKNOWN,
            r"user(?:name)? unknown|unknown (?:user|recipient|mailbox|address|local|e-?mail)|"
            r"no such (?:user|mailbox|recipient|address|account|person|local user)|"
            r"(?:user|mailbox|address|account|recipient|addressee)(?: \S+)? (?:does not|doesn't|"
            r"did not|not) exist|(?:user|mailbox|address|recipient|account) (?:was )?not found|"
            r"not (?:a )?(?:valid|known) (?:user|recipient|mailbox|address)|"
            r"invalid (?:recipient|mailbox|address|user|e-?mail)|address (?:invalid|unknown)|"
            r"(?:mailbox|user|recipient) (?:is )?(?:unavailable|invalid)|mailbox unavai|"
            r"unrouteable address|no mailbox|bad (?:destination )?(?:mailbox|address|recipient)|"
            r"(?<!recipient )(?<!sender )\baddress rejected(?!:)|address not found|"
            # Postfix's "Recipient address rejected: <why>": only when no why follows.
            r"recipient (?:address )?rejected(?:\.|$| ?\(in reply)|"
            r"does(?: not|n't) have an? \S+ account|"
            r"couldn't be found|could not be found|no one at this address|"
            r"is not (?:a )?(?:local|valid)|not (?:our|a) customer|"
            r"address is no longer valid|this address no longer accepts mail|"
            r"unknown or illegal alias|utilisateur inconnu|usuario (?:desconocido|no existe)|"
            r"not listed in (?:the )?(?:domino directory|public name & address book)|"
            r"domino ディレクトリには見つかりません|"
            r"unbekannt|sconosciuto|unzustellbar|no existe",
        ),
        (
            Reason.EXPIRED,
            r"retry timeout exceeded|delivery time expired|time expired|expired|"
            r"too long in (?:the )?queue|"
            r"could not be delivered (?:for|within) \d|retry time not reached|"
            r"undeliverable for \d|maximum time",
        ),
        (
            Reason.NETWORK_ERROR,
            r"connection (?:timed out|refused|reset|lost|closed|dropped|failed)|timed? ?out|"
            r"network (?:error|is unreachable|unreachable)|no route|lost connection|"
            r"could not connect|connect to .{0,80} failed|unable to connect|"
            r"dns (?:error|failure|lookup failure)|try again|routing loop|mail loop|"
            r"too many hops|hop count",
        ),
        (
            Reason.SYSTEM_ERROR,
            r"system (?:error|failure|not available)|internal (?:error|server error)|"
            r"temporar(?:y|ily)|local error|server error|mail system|"
            r"insufficient (?:system )?(?:storage|resources)|resources? (?:unavailable|"
            r"temporarily)|service (?:not available|unavailable)|out of memory|i/o error|"
            r"disk (?:full|error)",
        ),
        (
            Reason.POLICY,
            r"polic(?:y|ies)|not accepted|prohibited|not allowed|not authori[sz]ed|"
            r"denied|refused|rejected|blocked|banned|forbidden|administrative",
        ),
    )
)
_AT_DATA = re.compile(
    r"in reply to end of data|after end of data|in reply to data command|after data command",
    _F,
)
_DOES_NOT_ACCEPT_MAIL = ("521", "556")
_URL = re.compile(r"\bhttps?://\S+", _F)
_MAILBOX = re.compile(r"(?:\"[^\"]{0,64}\"|[^\s<>\"'(),;:\[\]]{1,64})@[^\s<>\"'(),;:\]]{1,255}", _F)
_HOST = re.compile(r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,63}\b", _F)
_ZONE = re.compile(
    r"spamhaus|spamcop|sorbs|barracuda|abuseat|dnsbl|\brbl\b|blocklist|blacklist|"
    r"uceprotect|mailspike|surbl|proofpoint|cloudmark",
    _F,
)
_ACCESS_DENIED = re.compile(r"access denied", _F)
_NULL_MX = re.compile(r"null mx|rfc ?7505", _F)
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\d|\.\d)", re.ASCII)
_REPLY = re.compile(r"(?<![\w.])([245])\d\d(?=[ -]|$)", re.ASCII)


def _may_overrule_7(temporary: bool) -> tuple[Group, ...]:
    """The groups a text may name against a security or policy code (x.7.x)."""
    if temporary:  # "450 4.7.1 greylisted": the text says what is going on
        return (Group.SENDER, Group.ADDRESS, Group.TRANSIENT, Group.MAILBOX)
    return (Group.SENDER, Group.ADDRESS)


def text_reason(text: str) -> Reason | None:
    """The reason the text states, most telling phrase first; None if it states none."""
    text = " ".join(text.split())  # folded lines: "Host not\n    found, try again"
    # Names are not words: "<scampbell@…>" is no scam, "mx1.spamexperts.com" no spam
    # verdict. Blocklist zones stay: "zen.spamhaus.org" is what the block says.
    text = _URL.sub(lambda m: m.group(0) if _ZONE.search(m.group(0)) else " <url> ", text)
    text = _MAILBOX.sub(" <address> ", text)
    text = _HOST.sub(lambda m: m.group(0) if _ZONE.search(m.group(0)) else " <host> ", text)
    text = " ".join(text.split())
    for reason, pattern in _TEXTS:
        if pattern.search(text):
            return reason
    return None


def enhanced_code(text: str) -> str:
    """The first enhanced status code in a text, like "5.1.1", or ""."""
    m = _ENHANCED.search(text)
    return ".".join(m.groups()) if m else ""


def at_data(text: str) -> bool:
    """Whether the words say the refusal came after the message was sent (at the end of
    DATA): then it was the message that was refused, whatever the words say."""
    return _AT_DATA.search(text) is not None


def reason_for(status: str = "", text: str = "", reply: str = "", action: str = "") -> Reason:
    """Why delivery failed, from a status code ("5.1.1"), a diagnostic or reply text,
    the basic reply code ("550") and a DSN action ("failed", "delayed")."""
    status = status.strip() or enhanced_code(text)
    m = _ENHANCED.fullmatch(status)
    if not reply:
        r = _REPLY.search(text)
        reply = r.group(0) if r else ""
    klass = m.group(1) if m else reply[:1]
    # `Action: delayed` says the MTA will try again: never a dead address, whatever code.
    temporary = klass == "4" or action.lower() == "delayed"
    code = (int(m.group(2)), int(m.group(3))) if m else None
    said = text_reason(text) if text else None

    # RFC 7504: this host or domain takes no mail at all ("521 5.3.2 System not accepting
    # network messages"), unless the words name a block of us.
    weak = said is None or said is Reason.POLICY or GROUP[said] is not Group.SENDER
    if reply in _DOES_NOT_ACCEPT_MAIL and not temporary and weak:
        return Reason.HOST_UNKNOWN
    if code is not None and code in _DECISIVE:
        reason = _DECISIVE[code]
        # A text that puts the blame on us, or on a full mailbox, overrides an address
        # code: "552 ... mailbox is over quota temporarily (#5.1.1)" (see above).
        overrides = (Group.SENDER, Group.MAILBOX)
        if said is not None and GROUP[said] in overrides and GROUP[reason] is Group.ADDRESS:
            reason = said
    elif code is not None and code in _SENDER_SIDE:
        reason = Reason.BLOCKED
    elif said is not None:
        reason = said
        if code is not None and code[0] == 7 and GROUP[said] not in _may_overrule_7(temporary):
            # A security or policy code keeps the blame on the sender side.
            reason = Reason.BLOCKED
        elif code is not None and code[0] == 7 and _ACCESS_DENIED.search(text):
            # "554 5.7.1 ... Recipient address rejected: Access denied" is Postfix's
            # access map refusing us; Exchange Online says the same for a missing
            # mailbox, but with 5.4.1 (the address group keeps that one).
            reason = Reason.POLICY
    elif code is not None:
        reason = _BY_SUBJECT.get(code[0], Reason.UNKNOWN)
        if temporary and reason is Reason.BLOCKED:
            # "454 4.7.0 TLS not available due to local problem": a 4.7.x that names
            # no block is a passing problem of theirs, not a throttle on us.
            reason = Reason.DELAYED
    else:
        reason = Reason.UNKNOWN

    if GROUP[reason] is Group.ADDRESS and text and at_data(text):
        # "550 Unknown user ... (in reply to end of DATA command)": the address was
        # accepted at RCPT; what was refused is the message (DESIGN.md §4).
        return Reason.UNKNOWN
    if temporary and said is Reason.HOST_UNKNOWN and _NULL_MX.search(text):
        return Reason.HOST_UNKNOWN  # a null MX (RFC 7505) is final, whatever the code
    if temporary:
        if GROUP[reason] in (Group.ADDRESS, Group.UNKNOWN):
            # A temporary failure never says the address is dead.
            reason = Reason.DELAYED if action.lower() != "failed" else Reason.EXPIRED
    elif reason is Reason.UNKNOWN and action.lower() == "delayed":
        reason = Reason.DELAYED
    return reason
