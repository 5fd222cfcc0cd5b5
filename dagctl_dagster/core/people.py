"""People: who is behind a plan's commits, and who is deciding.

A plan records the author and committer (name and email) of every commit it deploys (`PlanSpec.authors`).
The deployment config's `people:` maps emails to people, so "ada@acme.io" committing and "ada" approving are
the same person, and self-approval is refused whatever name the commits carry. An email nobody claims stays
an unknown identity: it is shown as such, and a decider whose name is its Git name or email still counts
as its author (unverified mode, where names are all there is, keeps working).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from .config import PersonConfig
from .plan import CommitIdentity, PlanSpec


class PlanAuthors(BaseModel):
    """The people behind a plan, and the commit identities no person claims."""

    model_config = ConfigDict(frozen=True)

    people: tuple[str, ...] = ()
    unknown: tuple[CommitIdentity, ...] = ()
    requester: str = ""

    def render(self) -> str:
        """`alice, bob; unknown: Ann <ann@x.io>` for summaries."""
        names = list(self.people)
        if self.requester and self.requester not in names:
            names.append(self.requester)
        text = ", ".join(names)
        if self.unknown:
            unknown = ", ".join(f"{i.name} <{i.email}>" for i in self.unknown)
            text = f"{text}; unknown: {unknown}" if text else f"unknown: {unknown}"
        return text or "unknown"


def get_plan_authors(spec: PlanSpec, people: Sequence[PersonConfig]) -> PlanAuthors:
    """Resolves the plan's commit identities (and, for a manual plan, its requester) to people."""
    by_email = {email: person.name for person in people for email in person.emails}
    resolved: list[str] = []
    unknown: list[CommitIdentity] = []
    for identity in spec.authors:
        name = by_email.get(identity.email.lower())
        if name is None:
            if identity not in unknown:
                unknown.append(identity)
        elif name not in resolved:
            resolved.append(name)
    requester = spec.author if spec.triggered_by == "manual" or not spec.authors else ""
    return PlanAuthors(people=tuple(resolved), unknown=tuple(unknown), requester=requester)


def is_plan_author(spec: PlanSpec, people: Sequence[PersonConfig], actor: str) -> bool:
    """Whether `actor` (a person's name, or a free-text name in unverified mode) is one of the plan's
    authors: a person whose email is on one of its commits, its requester, or (for identities no person
    claims) the Git name or email itself."""
    authors = get_plan_authors(spec, people)
    if actor in authors.people or actor == spec.author:
        return True
    folded = actor.strip().lower()
    return any(folded in (identity.name.lower(), identity.email.lower()) for identity in authors.unknown)
