"""How far a time is from now, as nhidel prints it: 'in 1h 30m', '3m ago', 'now'.

It imports nothing, because shell completion describes every grant it offers with it at every
TAB; `timefmt`, which holds the rest of nhidel's times (and imports `re` and `datetime`), hands it
on to every other reader.
"""

UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}

# How finely a span is told, by its length: seconds under 10 minutes (where they matter, and
# where whole minutes would round a 90s grant to "2m", then "1m" a second later), minutes
# under a day, hours beyond. So at most two units are shown, and rounding never moves a time
# by more than 5% of the span (30s of 10 minutes, 30 minutes of a day).
_PRECISION = ((600, 1), (86400, 60))
_COARSEST = 3600


def relative(timestamp: int, *, now: int) -> str:
    """'in 1h 30m', '3m ago', 'in 45s', 'now': at most two units, rounded to the nearest.

    The span is rounded half up to its precision (seconds under 10 minutes, minutes under a
    day, hours beyond), never truncated, so what `grant` prints and what `list` prints a second
    later agree: a 90m grant reads 'in 1h 30m' both times, a 15m grant 'in 15m'. A unit that
    rounds to zero is left out ('in 2h', not 'in 2h 0m').
    """
    delta = timestamp - now
    span = abs(delta)
    if span < 1:
        return "now"
    step = next((step for below, step in _PRECISION if span < below), _COARSEST)
    # Rounding may carry into the next unit up (23h59m40s is 1d), which then holds it exactly.
    span = (span + step // 2) // step * step
    units = list(UNIT_SECONDS.items())
    for index, (unit, size) in enumerate(units):
        if span >= size:
            count, rest = divmod(span, size)
            amount = f"{count}{unit}"
            if rest:  # a multiple of the next unit down, which is no finer than `step`
                smaller, smaller_size = units[index + 1]
                amount += f" {rest // smaller_size}{smaller}"
            break
    return f"in {amount}" if delta > 0 else f"{amount} ago"
