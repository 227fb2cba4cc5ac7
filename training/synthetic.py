"""A synthetic dataset with structure a model can learn, known by construction.

The generative story, in order:
- Genres have latent vectors; regions prefer some genres; each user takes 1-3 favourite
  genres from their region's preference and a latent vector near those genres' vectors.
- Creators specialise in a genre; each item takes its creator's genre most of the time,
  a latent vector near its genres' vectors, a Zipf popularity and a creation time (back
  catalogue, arrivals during the period, and 10% late arrivals in its last 20%).
- Each user is active over a window with a heavy-tailed (log-normal) number of
  engagements; items are drawn without replacement by softmax over
  beta * (user . item) + log popularity + log(share of the window the item existed).
- An engagement is either a bare rating (MovieLens-style) or a session: impression, click,
  maybe watch (seconds grow with satisfaction), maybe rating, like or dislike. Ratings
  1..5 come from the same satisfaction, so poorly matched items get low ratings.
- Extra impressions (shown, not clicked) come from a mildly personalised popularity list.
- Days are drawn per item genre from weekly x growth x seasonal (per genre) weights,
  within both the user's window and the item's lifetime; hours follow an evening peak.
- Optionally (`searches_per_user` > 0) users search before they engage: a share of the
  positive engagements (about `searches_per_user` per user) is preceded, 1 to 30 minutes
  earlier, by a query of one or two of that item's tags (sometimes with its first genre's
  name), so a recent search says what the user is about to like. Searches come from a
  second generator seeded from `seed`: adding them leaves every other table unchanged.

Everything comes from one `np.random.default_rng(seed)`: same arguments, same dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.data import Dataset, make_dataset

START = 1_704_067_200  # 2024-01-01T00:00:00Z, a Monday
DAY = 86_400
LATENT_DIM = 16
NOISE = 0.6 / np.sqrt(LATENT_DIM)  # per-coordinate; the noise vector has norm ~0.6
BETA = 6.0  # taste strength against log popularity (log range ~7 for 1,500 items)
ZIPF_EXPONENT = 1.0
LATE_FRACTION = 0.10
SESSION_FRACTION = 0.65  # the rest of the engagements are bare ratings
EXTRA_IMPRESSIONS = 0.8  # shown-not-clicked impressions per engagement
P_WATCH, P_RATE_IN_SESSION = 0.8, 0.15
# Expected interaction rows per engagement, used to turn interactions_per_user into
# engagements: bare rating 1; session 2 + watch + rating + ~0.2 like/dislike.
ROWS_PER_ENGAGEMENT = (
    (1 - SESSION_FRACTION) + SESSION_FRACTION * (2 + P_WATCH + P_RATE_IN_SESSION + 0.2)
    + EXTRA_IMPRESSIONS
)  # fmt: skip

GENRE_NAMES = (
    "Action", "Comedy", "Drama", "Documentary", "Horror", "Romance", "Sci-Fi", "Thriller",
    "Animation", "Music", "Sports", "Travel", "Cooking", "Fantasy", "Crime", "Gaming",
)  # fmt: skip
GENRE_TAGS = {
    "Action": ("explosions", "car chase", "martial arts", "heist", "stunts", "shootout"),
    "Comedy": ("funny", "satire", "slapstick", "witty dialogue", "parody", "feel good"),
    "Drama": ("tearjerker", "family drama", "character study", "slow burn", "courtroom"),
    "Documentary": ("true story", "nature", "history", "investigative", "biography"),
    "Horror": ("scary", "gore", "haunted house", "zombies", "jump scares", "creepy"),
    "Romance": ("love story", "wedding", "first love", "heartbreak", "romantic comedy"),
    "Sci-Fi": ("space", "time travel", "robots", "aliens", "dystopia", "cyberpunk"),
    "Thriller": ("suspense", "twist ending", "conspiracy", "serial killer", "spy"),
    "Animation": ("cartoon", "anime", "pixar style", "hand drawn", "talking animals"),
    "Music": ("concert", "live performance", "jazz", "hip hop", "rock", "musical"),
    "Sports": ("football", "underdog", "basketball", "olympics", "boxing", "training"),
    "Travel": ("road trip", "backpacking", "islands", "city guide", "mountains"),
    "Cooking": ("recipes", "baking", "street food", "chef", "vegan", "restaurant"),
    "Fantasy": ("magic", "dragons", "wizards", "epic quest", "fairy tale", "mythology"),
    "Crime": ("mafia", "detective", "heist gone wrong", "gangsters", "noir", "prison"),
    "Gaming": ("speedrun", "walkthrough", "esports", "retro games", "lets play", "rpg"),
}
GENERIC_TAGS = (
    "classic", "must see", "underrated", "award winner", "indie", "remake", "short",
    "long", "family friendly", "cult", "rewatchable", "overrated", "based on a book",
)  # fmt: skip
REGIONS = ("north", "south", "east", "west", "central", "coastal", "highlands", "islands")
OCCUPATIONS = (
    "engineer", "teacher", "artist", "healthcare", "sales", "administrator", "writer",
    "scientist", "lawyer", "technician", "programmer", "marketing", "other",
)  # fmt: skip
TITLE_ADJECTIVES = (
    "Silent", "Golden", "Broken", "Hidden", "Last", "Crimson", "Midnight", "Frozen", "Wild",
    "Lost", "Burning", "Endless", "Quiet", "Electric", "Hollow", "Distant", "Secret", "Iron",
    "Velvet", "Savage", "Bright", "Fallen", "Northern", "Little",
)  # fmt: skip
TITLE_NOUNS = (
    "River", "Kingdom", "Garden", "Signal", "Empire", "Harbor", "Mirror", "Storm", "Horizon",
    "Machine", "Forest", "Promise", "Shadow", "Frontier", "Echo", "City", "Letter", "Voyage",
    "Dream", "Winter", "Island", "Crown", "Road", "Heart",
)  # fmt: skip
CREATOR_WORDS = (
    "Northwind", "Bluebird", "Red Fox", "Silverline", "Lantern", "Paper Moon", "Granite",
    "Saffron", "Juniper", "Atlas", "Cobalt", "Meridian", "Orchard", "Pinewood", "Starling",
    "Tidewater", "Ember", "Quartz", "Willow", "Harbor Light",
)  # fmt: skip
CREATOR_KINDS = ("Studios", "Pictures", "Films", "Media", "Productions", "Channel", "Works")
WEEKDAY_WEIGHTS = np.array([0.85, 0.8, 0.85, 0.9, 1.05, 1.3, 1.25])  # Monday first
HOUR_WEIGHTS = np.array(
    [3, 2, 1, 1, 1, 1, 2, 3, 4, 4, 4, 5, 6, 5, 5, 5, 6, 7, 9, 11, 12, 11, 8, 5], dtype=float
)


@dataclass(frozen=True)
class SyntheticTruth:
    """The hidden variables behind a generated dataset, row-aligned with its users/items."""

    genres: tuple[str, ...]
    user_vectors: np.ndarray  # float64[n_users, LATENT_DIM], unit norm
    item_vectors: np.ndarray  # float64[n_items, LATENT_DIM], unit norm
    favourite_genres: list[list[str]]  # per user
    item_popularity: np.ndarray  # float64[n_items], sums to 1
    beta: float


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _top_k_rows(rng: np.random.Generator, logits: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per row, k[row] distinct column indices drawn by softmax without replacement.

    Gumbel-top-k: argsort(logits + Gumbel noise) is a draw without replacement from
    softmax(logits). Rows are concatenated in order; -inf columns are never drawn.
    """
    order = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1, kind="stable")
    return order[np.arange(logits.shape[1])[None, :] < k[:, None]]


def _genre_names(n_genres: int) -> list[str]:
    extra = [f"Genre {i + 1}" for i in range(len(GENRE_NAMES), n_genres)]
    return list(GENRE_NAMES[:n_genres]) + extra


def _genre_tags(genre: str) -> tuple[str, ...]:
    if genre in GENRE_TAGS:
        return GENRE_TAGS[genre]
    key = genre.lower()
    return tuple(f"{key} {word}" for word in ("classic", "fans", "essentials", "deep cut"))


def _titles(rng: np.random.Generator, n: int) -> list[str]:
    adj = rng.choice(TITLE_ADJECTIVES, size=(n, 2))
    first = rng.integers(len(TITLE_NOUNS), size=n)
    second = (first + rng.integers(1, len(TITLE_NOUNS), size=n)) % len(TITLE_NOUNS)  # differs
    noun = np.array(TITLE_NOUNS)[np.stack([first, second], axis=1)]
    pattern = rng.choice(5, size=n, p=[0.4, 0.2, 0.15, 0.15, 0.1])
    out = []
    for p, (a1, a2), (n1, n2) in zip(pattern, adj, noun):
        out.append((
            f"The {a1} {n1}", f"{a1} {n1}", f"{n1} of the {a2} {n2}", f"The {n1} and the {n2}",
            f"{a1} {n1} {a2} {n2}",
        )[p])  # fmt: skip
    return out


def _creator_names(rng: np.random.Generator, n: int) -> list[str]:
    combos = [f"{w} {k}" for w in CREATOR_WORDS for k in CREATOR_KINDS]
    combos = [combos[i] for i in rng.permutation(len(combos))]
    return [combos[i % len(combos)] + (f" {i // len(combos) + 1}" if i >= len(combos) else "")
            for i in range(n)]  # fmt: skip


def _sample_days(
    rng: np.random.Generator, cum: np.ndarray, genre: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Day in [lo, hi) drawn with weights cum[genre] (row-wise cumulative, cum[:, 0] = 0).

    Inverse-CDF on each row restricted to [lo, hi). Rows are shifted by 2 * genre so one
    searchsorted over the flattened table serves every genre at once.
    """
    n_days = cum.shape[1] - 1
    shifted = (cum + 2.0 * np.arange(cum.shape[0])[:, None]).ravel()
    a, b = cum[genre, lo], cum[genre, hi]
    u = a + rng.random(len(genre)) * (b - a) + 2.0 * genre
    flat = np.searchsorted(shifted, u, side="right") - 1
    return np.clip(flat - genre * (n_days + 1), lo, hi - 1)


def _users(rng: np.random.Generator, n_users: int, genre_pop: np.ndarray) -> dict:
    n_genres = len(genre_pop)
    region_share = rng.dirichlet(np.full(len(REGIONS), 3.0))
    # Each region mixes the global genre taste with a peaked regional one.
    region_genre = 0.4 * genre_pop + 0.6 * rng.dirichlet(np.full(n_genres, 0.4), len(REGIONS))
    region = rng.choice(len(REGIONS), size=n_users, p=region_share)
    n_fav = rng.choice([1, 2, 3], size=n_users, p=[0.3, 0.45, 0.25])
    fav_order = np.argsort(
        -(np.log(region_genre[region]) + rng.gumbel(size=(n_users, n_genres))), axis=1
    )
    fav = np.zeros((n_users, n_genres), dtype=bool)
    rows = np.repeat(np.arange(n_users), n_fav)
    fav[rows, fav_order[np.arange(n_genres)[None, :] < n_fav[:, None]]] = True

    age = np.clip(np.round(15 + rng.gamma(2.2, 8.0, n_users)), 13, 85).astype(np.int64)
    age[rng.random(n_users) < 0.03] = 0  # unknown
    gender = rng.choice(np.array(["M", "F", "X", ""]), size=n_users, p=[0.48, 0.47, 0.02, 0.03])
    occupation = rng.choice(np.array(OCCUPATIONS), size=n_users)
    occupation = np.where((age > 0) & (age < 23) & (rng.random(n_users) < 0.8),
                          "student", occupation)  # fmt: skip
    occupation = np.where(age >= 65, "retired", occupation)
    return {"region": region, "fav": fav, "age": age, "gender": gender, "occupation": occupation}


def _items(rng: np.random.Generator, n_items: int, genre_pop: np.ndarray, days: int) -> dict:
    n_genres = len(genre_pop)
    n_creators = max(1, round(n_items / 5))
    creator_genre = rng.choice(n_genres, size=n_creators, p=genre_pop)
    creator_weight = 1.0 / (1.0 + rng.permutation(n_creators)) ** 0.7
    creator = rng.choice(n_creators, size=n_items, p=creator_weight / creator_weight.sum())
    primary = np.where(rng.random(n_items) < 0.7, creator_genre[creator],
                       rng.choice(n_genres, size=n_items, p=genre_pop))  # fmt: skip
    n_extra = rng.choice([0, 1, 2], size=n_items, p=[0.45, 0.4, 0.15])
    genre_weight = np.zeros((n_items, n_genres))
    genre_weight[np.arange(n_items), primary] = 1.0
    extra_keys = np.log(genre_pop)[None, :] + rng.gumbel(size=(n_items, n_genres))
    extra_keys[np.arange(n_items), primary] = -np.inf
    extra_order = np.argsort(-extra_keys, axis=1)
    for j in range(2):
        has = n_extra > j
        genre_weight[np.flatnonzero(has), extra_order[has, j]] = 0.5

    # Creation: 10% late (last 20% of the period), of the rest 80% back catalogue.
    period = days * DAY
    created = START - rng.integers(DAY, 3 * 365 * DAY, size=n_items)
    during = rng.random(n_items) < 0.2
    created[during] = START + rng.integers(0, int(0.8 * period), size=during.sum())
    late = rng.choice(n_items, size=round(LATE_FRACTION * n_items), replace=False)
    created[late] = START + rng.integers(int(0.8 * period), int(0.97 * period), size=len(late))

    popularity = 1.0 / (1.0 + rng.permutation(n_items)) ** ZIPF_EXPONENT
    return {
        "creator": creator, "n_creators": n_creators, "primary": primary,
        "genre_weight": genre_weight, "created": created, "late": late,
        "popularity": popularity / popularity.sum(),
        "quality": rng.normal(0.0, 0.35, n_items),
        "duration": np.clip(rng.lognormal(np.log(1500.0), 0.6, n_items), 60, 10_800),
    }  # fmt: skip


def _flags(rng: np.random.Generator, n_items: int, n_users: int) -> tuple[list, list]:
    flags: list[list[str]] = [[] for _ in range(n_items)]
    owners = [""] * n_items
    counts = {"blocked": 0.015, "misinformation": 0.01, "private": 0.005}
    n_each = {f: max(1, round(share * n_items)) if n_items >= 20 else 0
              for f, share in counts.items()}  # fmt: skip
    chosen = rng.choice(n_items, size=min(n_items, sum(n_each.values())), replace=False)
    start = 0
    for flag, n in n_each.items():
        for i in chosen[start : start + n]:
            flags[i].append(flag)
            if flag == "private":
                owners[i] = f"u{rng.integers(n_users):06d}"
        start += n
    return flags, owners


def _tags(rng: np.random.Generator, genre_weight: np.ndarray, genres: list[str]) -> list[list]:
    vocab = [_genre_tags(g) for g in genres]
    out = []
    for weights in genre_weight:
        p = weights / weights.sum()
        tags: dict[str, None] = {}
        for _ in range(rng.integers(1, 6)):
            if rng.random() < 0.75:
                words = vocab[rng.choice(len(p), p=p)]
                tags[words[rng.integers(len(words))]] = None
            else:
                tags[GENERIC_TAGS[rng.integers(len(GENERIC_TAGS))]] = None
        out.append(list(tags))
    return out


def _activity(
    rng: np.random.Generator, n_users: int, n_items: int, days: int, per_user: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activity windows in days [join, leave), at least 7 days, and heavy-tailed
    (log-normal) engagement counts whose mean gives ~per_user interaction rows."""
    join = np.where(rng.random(n_users) < 0.35, rng.integers(0, int(0.7 * days) + 1, n_users), 0)
    churn = rng.random(n_users) < 0.2
    leave = np.where(churn, join + np.ceil(rng.uniform(0.3, 1.0, n_users) * (days - join)), days)
    leave = np.clip(np.maximum(leave, join + 7), 0, days).astype(np.int64)
    join = np.minimum(join, leave - 7)
    sigma = 1.0
    mean_log = np.log(per_user / ROWS_PER_ENGAGEMENT) - sigma**2 / 2  # E[lognormal] = mean
    engaged = np.ceil(rng.lognormal(mean_log, sigma, n_users))
    return join, leave, np.clip(engaged, 2, max(2, n_items // 3)).astype(np.int64)


def _draw_pairs(
    rng: np.random.Generator, user_vec: np.ndarray, item_vec: np.ndarray, items: dict,
    private_owner: np.ndarray, join: np.ndarray, leave: np.ndarray, engaged: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(user, item) of engagements and of shown-not-clicked impressions, user-major.

    Engagements: softmax over beta * (u . v) + log popularity + 0.5 * quality + log
    exposure, where exposure is the share of the user's window the item existed (items
    that existed less than a day, or private items of other users, are never drawn).
    Impressions come from a popularity-leaning recommender: 0.3 * beta * (u . v) + log pop.
    """
    n_users, n_items = len(user_vec), len(item_vec)
    n_shown = np.round(EXTRA_IMPRESSIONS * engaged).astype(np.int64)
    created_day = (items["created"] - START) / DAY  # fractional; negative = before START
    log_pop = np.log(items["popularity"])
    pair_user, pair_item, shown_user, shown_item = [], [], [], []
    chunk = max(1, 2_000_000 // n_items)  # bounds the users x items matrices in memory
    for s in range(0, n_users, chunk):
        rows = np.arange(s, min(n_users, s + chunk))
        affinity = user_vec[rows] @ item_vec.T
        span = (leave[rows] - join[rows])[:, None].astype(float)
        alive = leave[rows][:, None] - np.maximum(join[rows][:, None], created_day[None, :])
        with np.errstate(divide="ignore"):
            log_exposure = np.log(np.clip(alive / span, 0.0, 1.0))
        log_exposure[alive < 1.0] = -np.inf
        hidden = (private_owner[None, :] >= 0) & (private_owner[None, :] != rows[:, None])
        log_exposure[hidden] = -np.inf
        n_avail = np.isfinite(log_exposure).sum(axis=1)
        logits = BETA * affinity + log_pop + 0.5 * items["quality"] + log_exposure
        k = np.minimum(engaged[rows], n_avail)
        pair_user.append(np.repeat(rows, k))
        pair_item.append(_top_k_rows(rng, logits, k))
        k_shown = np.minimum(n_shown[rows], n_avail)
        shown_logits = 0.3 * BETA * affinity + log_pop + log_exposure
        shown_user.append(np.repeat(rows, k_shown))
        shown_item.append(_top_k_rows(rng, shown_logits, k_shown))
    return (np.concatenate(pair_user), np.concatenate(pair_item),
            np.concatenate(shown_user), np.concatenate(shown_item))  # fmt: skip


def _day_cdf(rng: np.random.Generator, n_genres: int, days: int) -> np.ndarray:
    """float64[n_genres, days + 1]: cumulative daily weight per genre, 0 .. 1.

    weight(g, d) = weekday(d) x growth(d) x (1 + amp_g cos(2 pi (d - phase_g) / 365))
    """
    day = np.arange(days)
    amp = rng.uniform(0.2, 0.8, n_genres)
    phase = rng.uniform(0.0, 365.0, n_genres)
    season = 1.0 + amp[:, None] * np.cos(2 * np.pi * (day[None, :] - phase[:, None]) / 365.0)
    weight = WEEKDAY_WEIGHTS[day % 7] * (1.0 + 0.4 * day / days) * season
    cum = np.concatenate([np.zeros((n_genres, 1)), np.cumsum(weight, axis=1)], axis=1)
    return cum / cum[:, -1:]


@dataclass(frozen=True)
class _Timeline:
    cum: np.ndarray  # _day_cdf
    join: np.ndarray
    leave: np.ndarray
    items: dict
    days: int

    @property
    def end(self) -> int:
        return START + self.days * DAY

    def sample(self, rng: np.random.Generator, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """A time for each (u, i): a day within the user's window and the item's life,
        weighted by the item's primary genre; an hour from the evening-heavy curve; at
        least 10 minutes after the item was created."""
        created = self.items["created"][i]
        created_day = np.maximum((created - START) // DAY, 0)
        lo = np.maximum(self.join[u], created_day)
        day = _sample_days(rng, self.cum, self.items["primary"][i], lo, self.leave[u])
        hour = rng.choice(24, size=len(u), p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
        t = START + day * DAY + hour * 3600 + rng.integers(0, 3600, size=len(u))
        return np.minimum(np.maximum(t, created + 600), self.end - 1)


def _events(
    rng: np.random.Generator, pu: np.ndarray, pi: np.ndarray, su: np.ndarray, si: np.ndarray,
    user_vec: np.ndarray, item_vec: np.ndarray, items: dict, timeline: _Timeline,
) -> pd.DataFrame:  # fmt: skip
    """Interaction rows (user and item as integer indices) for engagements and impressions.

    satisfaction = 3.5 + 1.2 z(u . v) + quality + noise drives the rating (rounded, 1..5),
    the watched share of the item and the chance of a like or dislike.
    """
    n = len(pu)
    t_click = timeline.sample(rng, pu, pi)
    affinity = np.einsum("ij,ij->i", user_vec[pu], item_vec[pi])
    z = (affinity - affinity.mean()) / (affinity.std() + 1e-9)
    satisfaction = 3.5 + 1.2 * z + items["quality"][pi] + rng.normal(0.0, 0.6, n)
    rating = np.clip(np.round(satisfaction), 1, 5)
    session = rng.random(n) < SESSION_FRACTION
    completion = np.clip(0.15 + 0.2 * (satisfaction - 1) + rng.normal(0, 0.1, n), 0.02, 1)
    watch_s = np.round(items["duration"][pi] * completion)
    watched = session & (rng.random(n) < P_WATCH)
    after = t_click + np.where(watched, watch_s, 0).astype(np.int64)
    p_like = np.select([satisfaction >= 4.5, satisfaction >= 3.5], [0.45, 0.2], 0.02)
    p_dislike = np.select([satisfaction < 1.5, satisfaction < 2.5], [0.5, 0.25], 0.01)
    liked = session & (rng.random(n) < p_like)
    disliked = session & ~liked & (rng.random(n) < p_dislike)
    rated = ~session | (rng.random(n) < P_RATE_IN_SESSION)

    parts = [
        (session, pu, pi, t_click - rng.integers(5, 600, n), "impression", 1.0),
        (session, pu, pi, t_click, "click", 1.0),
        (watched, pu, pi, t_click + 5, "watch", watch_s),
        (rated, pu, pi, after + rng.integers(10, 300, n), "rating", rating),
        (liked, pu, pi, after + rng.integers(5, 200, n), "like", 1.0),
        (disliked, pu, pi, after + rng.integers(5, 200, n), "dislike", 1.0),
        (np.ones(len(su), bool), su, si, timeline.sample(rng, su, si), "impression", 1.0),
    ]
    frames = []
    for mask, u, i, t, event, value in parts:
        value_arr = np.broadcast_to(np.asarray(value, dtype=np.float64), mask.shape)
        frames.append(pd.DataFrame({
            "user_id": u[mask],
            "item_id": i[mask],
            "timestamp": np.minimum(t[mask], timeline.end - 1).astype(np.int64),
            "event_type": event,
            "value": value_arr[mask],
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def generate_with_truth(
    n_users: int = 2000,
    n_items: int = 1500,
    n_genres: int = 12,
    seed: int = 0,
    days: int = 180,
    interactions_per_user: int = 40,
    searches_per_user: float = 0.0,
) -> tuple[Dataset, SyntheticTruth]:
    """`generate`, plus the latent variables it drew (for tests with a known answer)."""
    if n_users < 1 or n_items < 2 or n_genres < 1 or days < 7 or interactions_per_user < 1:
        raise ValueError(
            "need n_users >= 1, n_items >= 2, n_genres >= 1, days >= 7, interactions_per_user"
            f" >= 1; got {n_users}, {n_items}, {n_genres}, {days}, {interactions_per_user}"
        )
    rng = np.random.default_rng(seed)
    genres = _genre_names(n_genres)
    genre_vec = _unit(rng.normal(size=(n_genres, LATENT_DIM)))
    genre_pop = rng.dirichlet(np.full(n_genres, 3.0))
    users = _users(rng, n_users, genre_pop)
    items = _items(rng, n_items, genre_pop, days)
    flags, owners = _flags(rng, n_items, n_users)
    user_vec = _unit(users["fav"] @ genre_vec + NOISE * rng.normal(size=(n_users, LATENT_DIM)))
    item_vec = _unit(
        items["genre_weight"] @ genre_vec + NOISE * rng.normal(size=(n_items, LATENT_DIM))
    )

    join, leave, engaged = _activity(rng, n_users, n_items, days, interactions_per_user)
    private_owner = np.array([int(o[1:]) if o else -1 for o in owners])
    pu, pi, su, si = _draw_pairs(
        rng, user_vec, item_vec, items, private_owner, join, leave, engaged
    )
    timeline = _Timeline(_day_cdf(rng, n_genres, days), join, leave, items, days)
    user_ids = np.array([f"u{u:06d}" for u in range(n_users)], dtype=object)
    item_ids = np.array([f"i{i:06d}" for i in range(n_items)], dtype=object)
    interactions = _events(rng, pu, pi, su, si, user_vec, item_vec, items, timeline)
    interactions["user_id"] = user_ids[interactions["user_id"].to_numpy()]
    interactions["item_id"] = item_ids[interactions["item_id"].to_numpy()]

    item_genres = [[genres[g] for g in np.flatnonzero(w)] for w in items["genre_weight"]]
    # Primary genre first: list order is the item's own ranking of its genres.
    item_genres = [
        [genres[p]] + [g for g in gs if g != genres[p]]
        for p, gs in zip(items["primary"], item_genres)
    ]
    creators = _creator_names(rng, items["n_creators"])
    item_frame = pd.DataFrame({
        "item_id": item_ids,
        "title": _titles(rng, n_items),
        "genres": item_genres,
        "tags": _tags(rng, items["genre_weight"], genres),
        "created_at": items["created"],
        "creator": [creators[c] for c in items["creator"]],
        "flags": flags,
        "owner_id": owners,
    })  # fmt: skip
    user_frame = pd.DataFrame({
        "user_id": user_ids,
        "age": users["age"],
        "gender": users["gender"],
        "occupation": users["occupation"],
        "region": np.array(REGIONS)[users["region"]],
    })  # fmt: skip
    args = dict(n_users=n_users, n_items=n_items, n_genres=n_genres, seed=seed, days=days,
                interactions_per_user=interactions_per_user)  # fmt: skip
    meta = {
        "name": f"synthetic-seed{seed}",
        "source": "training.synthetic.generate(" + ", ".join(f"{k}={v}" for k, v in args.items())
        + ")",
        "created_by": "recsys data synth",
        "rating_scale_max": 5,
        "generator": args,
    }
    searches = None
    if searches_per_user > 0:
        args["searches_per_user"] = searches_per_user
        meta["generator"] = args
        searches = _searches(np.random.default_rng([seed, 1]), interactions, item_frame, searches_per_user,
                             n_users)
    ds = make_dataset(interactions, item_frame, user_frame, meta, searches)
    truth = SyntheticTruth(
        genres=tuple(genres),
        user_vectors=user_vec,
        item_vectors=item_vec,
        favourite_genres=[[genres[g] for g in np.flatnonzero(f)] for f in users["fav"]],
        item_popularity=items["popularity"],
        beta=BETA,
    )
    return ds, truth


def generate(
    n_users: int = 2000,
    n_items: int = 1500,
    n_genres: int = 12,
    seed: int = 0,
    days: int = 180,
    interactions_per_user: int = 40,
    searches_per_user: float = 0.0,
) -> Dataset:
    """A synthetic dataset; about n_users * interactions_per_user interaction rows.

    Deterministic for given arguments (a single `np.random.default_rng(seed)`, no clock).
    """
    ds, _ = generate_with_truth(n_users, n_items, n_genres, seed, days, interactions_per_user, searches_per_user)
    return ds


def _searches(rng: np.random.Generator, interactions: pd.DataFrame, items: pd.DataFrame, per_user: float,
              n_users: int) -> pd.DataFrame:
    """A query before a share of the positive engagements (see the module docstring)."""
    kind, value = interactions["event_type"].to_numpy(), interactions["value"].to_numpy()
    positive = np.flatnonzero(np.isin(kind, ("click", "like")) | ((kind == "rating") & (value >= 4)))
    share = min(1.0, per_user * n_users / max(len(positive), 1))
    row_of = {item: r for r, item in enumerate(items["item_id"])}
    rows: list[tuple[str, int, str]] = []
    for r in positive[rng.random(len(positive)) < share].tolist():
        item = row_of[interactions["item_id"].iat[r]]
        tags, genres = list(items["tags"].iat[item]), list(items["genres"].iat[item])
        if not tags:
            continue
        words = [str(t) for t in rng.choice(tags, size=min(len(tags), int(rng.integers(1, 3))), replace=False)]
        if genres and rng.random() < 0.3:
            words.append(genres[0].lower())
        t = int(interactions["timestamp"].iat[r]) - int(rng.integers(60, 1801))
        rows.append((str(interactions["user_id"].iat[r]), t, " ".join(words)))
    return pd.DataFrame(rows, columns=["user_id", "timestamp", "query"])
