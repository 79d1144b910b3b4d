"""Points that open their feature's atlas page (`python -m geometry.atlas`) when clicked."""

from __future__ import annotations

from collections.abc import Iterable

from sae.formats.names import folder_name

# plotly's to_html(post_script=...): {plot_id} is the figure's div
OPEN_ON_CLICK = ("var gd=document.getElementById('{plot_id}');gd.on('plotly_click',function(e){"
                 "var u=e.points.length&&e.points[0].customdata;if(u){window.open(u,'_blank');}});")


def feature_urls(atlas: str | None, sae: str, features: Iterable[int]) -> list[str] | None:
    """The atlas page of every feature of `sae` (its spec, as the atlas names its folder), relative to the
    page the plot is on: `atlas` is the atlas's folder seen from there (None: no links)."""
    if atlas is None:
        return None
    return [f"{atlas.rstrip('/')}/{folder_name(sae)}/feature.html#{int(f)}" for f in features]
