"""Each domain's places and physical relations, as objects the group stage is given.

Why a registry keyed by domain name: the group engine must not know which
departments exist - ``citystream.catalog`` declares them, and each one's
``Relations`` (``traffic``, ``water``, ``grid``) is registered here once.
A domain without an entry still gets grouping, health and neighbour drift
(``BaseRelations``).
"""

from __future__ import annotations

from citystream.detection.evidence import Family
from citystream.detection.relations.base import BaseRelations, Ignored, Relations, coherent
from citystream.detection.relations.grid import GridRelations
from citystream.detection.relations.traffic import TrafficRelations
from citystream.detection.relations.water import WaterRelations

#: The relations of every domain the catalog declares, by domain name.
RELATIONS: dict[str, Relations] = {
    r.domain: r for r in (TrafficRelations(), WaterRelations(), GridRelations())
}


def relations_for(domain: str) -> Relations:
    """The domain's relations (a plain ``BaseRelations`` for a domain nobody described yet)."""
    found = RELATIONS.get(domain)
    return found if found is not None else BaseRelations(domain)


def family_and_locus(domain: str, metric: str, key_id: str) -> Family:
    """Which anomalies belong to one incident: same domain, family and place."""
    return relations_for(domain).family_and_locus(metric, key_id)


def neighbours(domain: str, a: str, b: str) -> bool:
    """Do sensors ``a`` and ``b`` of ``domain`` see the same world?"""
    return relations_for(domain).neighbours(a, b)


__all__ = [
    "RELATIONS",
    "BaseRelations",
    "GridRelations",
    "Ignored",
    "Relations",
    "TrafficRelations",
    "WaterRelations",
    "coherent",
    "family_and_locus",
    "neighbours",
    "relations_for",
]
