"""Sequence-to-sequence Transformer for multi-step forecasting (plain PyTorch).

Encoder: the past window cut into patches of ``patch_len`` steps (as in PatchTST), one token
per patch, so attention over a week of half-hours costs 42 tokens instead of 336.
Decoder: one token per future step. Its input at step k is the value at step k-1 (the last
observed value at k = 0): the ground truth under teacher forcing, the model's own prediction
when forecasting. It also gets inputs that are known in advance, so it does not depend
on its own, drifting, predictions: the value ``seasonal_lag`` steps earlier (same slot last
week) and calendar embeddings (slot of day, day of week).

Outputs: with ``quantiles`` (levels such as 0.1, 0.5, 0.9, which must include 0.5) the head
gives Q values per step, built as the median plus cumulated softplus increments above and
below it, so the quantiles never cross. The median is the point forecast and the value fed
back to the next step. Without levels the head gives one value per step (Q = 1).

Positions are sinusoidal over absolute step indices: past step i sits at position i and
future step k at ``input_window + k``, so the decoder's positions continue after the
encoder's. A causal mask keeps step k from seeing decoder inputs after k.

Shapes: B batch, W input_window, H horizon, D d_model, N = W / patch_len encoder tokens,
Q quantile levels (1 without levels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(T,) positions -> (T, dim) sinusoidal encodings, as in 'Attention is all you need'."""
    half = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
    freq = torch.exp(-math.log(10000.0) * half / dim)
    angles = positions.float()[:, None] * freq[None, :]  # (T, dim/2)
    enc = torch.zeros(len(positions), dim, device=positions.device)
    enc[:, 0::2], enc[:, 1::2] = torch.sin(angles), torch.cos(angles)
    return enc


class CalendarEmbedding(nn.Module):
    """[slot of day, day of week, holiday] -> (..., D), the sum of learned embeddings."""

    def __init__(self, slots_per_day: int, d_model: int, holidays: bool):
        super().__init__()
        self.slot = nn.Embedding(slots_per_day, d_model)
        self.weekday = nn.Embedding(7, d_model)
        self.holiday = nn.Embedding(2, d_model) if holidays else None

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        x = self.slot(time[..., 0]) + self.weekday(time[..., 1])
        return x if self.holiday is None else x + self.holiday(time[..., 2])


class Attention(nn.Module):
    """Multi-head attention whose keys/values can be cached for step-by-step decoding."""

    def __init__(self, d_model: int, nhead: int, dropout: float):
        super().__init__()
        self.nhead, self.dropout = nhead, dropout
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, h, T, D/h)
        B, T, D = x.shape
        return x.view(B, T, self.nhead, D // self.nhead).transpose(1, 2)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, D) -> keys and values, each (B, h, S, D/h)."""
        k, v = self.key_value(source).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], causal: bool = False) -> torch.Tensor:
        """(B, T, D) queries attend to cached (keys, values) -> (B, T, D)."""
        B, T, D = x.shape
        q = self._heads(self.query(x))
        y = F.scaled_dot_product_attention(
            q, kv[0], kv[1], is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class DecoderLayer(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention to the encoder, feed-forward."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, nhead, dropout)
        self.cross_attn = Attention(d_model, nhead, dropout)
        self.ff = nn.Sequential(
            nn.Linear(d_model, dim_feedforward), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim_feedforward, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory_kv: tuple, cache: dict | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D). Without ``cache``: all T steps at once under a causal mask.

        With ``cache`` (a dict kept by the caller): T new steps that follow the cached ones;
        their keys/values are appended, so earlier steps are never recomputed.
        """
        h = self.norm1(x)
        k, v = self.self_attn.keys_values(h)
        if cache is None:
            x = x + self.drop(self.self_attn(h, (k, v), causal=True))
        else:
            # One new step at a time: it may attend to every cached step and to itself.
            assert x.shape[1] == 1, "cached decoding takes one step at a time"
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            x = x + self.drop(self.self_attn(h, (k, v), causal=False))
        x = x + self.drop(self.cross_attn(self.norm2(x), memory_kv))
        return x + self.drop(self.ff(self.norm3(x)))


def median_index(levels: Sequence[float]) -> int:
    """Index of the median (0.5) in increasing ``levels``; 0 for a point forecast (no levels, Q = 1)."""
    return list(levels).index(0.5) if levels else 0


@dataclass(frozen=True)
class NetShape:
    """Everything that fixes a :class:`Seq2SeqTransformer`'s layers and inputs; no field has a default.

    Built from the config (``model`` section and the data's window) or from a checkpoint's
    hyperparameters by :mod:`lit_forecast.models.factory`, so nothing here can disagree with them.
    """

    input_window: int  # W past slots
    horizon: int  # H future slots
    slots_per_day: int  # size of the slot-of-day embedding
    d_model: int
    nhead: int
    encoder_layers: int
    decoder_layers: int
    dim_feedforward: int
    dropout: float
    patch_len: int  # past slots per encoder token; divides input_window
    covariates: bool  # calendar embeddings (slot of day, day of week)
    holidays: bool  # with covariates: a holiday embedding too
    seasonal_lag: int  # the decoder also sees the value this many slots earlier; 0 = off
    daily_lag: int  # a second such lag (48 = same slot yesterday); 0 = off
    window_norm: bool  # scale each window by its own past mean and std
    residual: bool  # predict the correction to the seasonal_lag value
    quantiles: tuple[float, ...]  # increasing levels holding 0.5; () = one point value per step

    def __post_init__(self) -> None:
        if self.input_window % self.patch_len:
            raise ValueError(f"input_window {self.input_window} is not a multiple of patch_len {self.patch_len}")
        for name, lag in (("seasonal_lag", self.seasonal_lag), ("daily_lag", self.daily_lag)):
            if lag and not self.horizon <= lag <= self.input_window:
                raise ValueError(f"{name} {lag} must lie in [horizon {self.horizon}, input_window {self.input_window}]")
        if self.residual and not self.seasonal_lag:
            raise ValueError("residual needs seasonal_lag: the forecast is a correction of the seasonal value")
        levels = [float(q) for q in self.quantiles]
        if levels and (0.5 not in levels or levels != sorted(set(levels))):
            raise ValueError(f"quantiles {levels} must be increasing and include 0.5 (the median)")
        object.__setattr__(self, "quantiles", tuple(levels))

    @property
    def levels(self) -> list[float]:
        """The quantile levels as a list; [] for a point forecast."""
        return list(self.quantiles)

    @property
    def median_index(self) -> int:
        return median_index(self.quantiles)

    @property
    def lags(self) -> list[int]:
        """The known-future lagged inputs: ``seasonal_lag`` then ``daily_lag``, where set."""
        return [lag for lag in (self.seasonal_lag, self.daily_lag) if lag]


class Seq2SeqTransformer(nn.Module):
    """Encoder over patches of the past, autoregressive decoder over the horizon."""

    def __init__(self, shape: NetShape):
        super().__init__()
        self.shape = shape
        input_window, horizon, patch_len, d_model = shape.input_window, shape.horizon, shape.patch_len, shape.d_model
        nhead, dim_feedforward, dropout = shape.nhead, shape.dim_feedforward, shape.dropout
        self.input_window, self.horizon, self.patch_len = input_window, horizon, patch_len
        self.window_norm, self.residual, self.lags = shape.window_norm, shape.residual, shape.lags
        self.levels, self.median_index = shape.levels, shape.median_index

        self.patch_embed = nn.Linear(patch_len, d_model)
        self.step_embed = nn.Linear(1 + len(self.lags), d_model)  # [previous value, value at each lag]
        self.calendar = CalendarEmbedding(shape.slots_per_day, d_model, shape.holidays) if shape.covariates else None
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, shape.encoder_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.decoder = nn.ModuleList(
            DecoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(shape.decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, max(1, len(self.levels)))
        self.drop = nn.Dropout(dropout)
        # Fixed position tables: encoder token j starts at step j * patch_len, decoder step k at W + k.
        steps = torch.arange(input_window + horizon)
        self.register_buffer("enc_pos", sinusoidal(steps[:input_window:patch_len], d_model), persistent=False)
        self.register_buffer("dec_pos", sinusoidal(steps[input_window:], d_model), persistent=False)

    # -- pieces ---------------------------------------------------------------------------------

    def window_stats(self, past_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, W) -> loc, scale (B, 1): the window's own mean and std with ``window_norm``, else 0 and 1.

        Per-window scaling (as in RevIN) lets the network see shapes rather than levels, so a
        week that runs busier or quieter than the training period does not shift its inputs.
        """
        if not self.window_norm:
            zero = past_target.new_zeros(len(past_target), 1)
            return zero, zero + 1.0
        return past_target.mean(dim=1, keepdim=True), past_target.std(dim=1, keepdim=True).clamp_min(1e-3)

    def encode(self, past_target: torch.Tensor, past_time: torch.Tensor) -> torch.Tensor:
        """(B, W) scaled past and (B, W, 3) calendar -> memory (B, N, D)."""
        B, W = past_target.shape
        patches = past_target.view(B, W // self.patch_len, self.patch_len)
        x = self.patch_embed(patches) + self.enc_pos
        if self.calendar is not None:
            x = x + self.calendar(past_time[:, :: self.patch_len])  # calendar of each patch's first step
        return self.encoder(self.drop(x))

    def seasonal_inputs(self, past_target: torch.Tensor) -> torch.Tensor | None:
        """(B, W) -> (B, H, L): for future step k, the past value each of the L lags before it.

        Lags are ``seasonal_lag`` (same slot last week) then ``daily_lag`` (yesterday), where set.
        """
        if not self.lags:
            return None
        starts = [self.input_window - lag for lag in self.lags]
        return torch.stack([past_target[:, s : s + self.horizon] for s in starts], dim=-1)

    def quantile_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) decoder states -> (B, T, Q) quantiles, non-decreasing along Q.

        The head's median column is the median; the columns above it add cumulated
        softplus increments, the columns below subtract them, so no two levels cross.
        """
        raw = self.head(hidden)
        if raw.shape[-1] == 1:
            return raw
        m = self.median_index
        median = raw[..., m : m + 1]
        above = median + torch.cumsum(F.softplus(raw[..., m + 1 :]), dim=-1)
        below = median - torch.cumsum(F.softplus(raw[..., :m].flip(-1)), dim=-1).flip(-1)
        return torch.cat([below, median, above], dim=-1)

    def _output(self, x: torch.Tensor, seasonal: torch.Tensor | None, first: int) -> torch.Tensor:
        """Decoder states (B, T, D) for steps first..first+T-1 -> quantiles (B, T, Q), window-scaled units.

        With ``residual`` the network predicts the correction to last week's value at each step.
        """
        out = self.quantile_outputs(self.decoder_norm(x))
        if self.residual:
            out = out + seasonal[:, first : first + x.shape[1], 0:1]
        return out

    def _known_inputs(self, seasonal: torch.Tensor | None, future_time: torch.Tensor) -> torch.Tensor:
        """The part of every decoder token that is known before decoding: (B, H, D), or (H, D).

        ``step_embed`` is linear in [previous value, seasonal value], so its seasonal term, its
        bias, the positions and the calendar are summed once per window; each decoding step
        only adds its previous value's term (see :meth:`_decoder_tokens`).
        """
        x = self.step_embed.bias + self.dec_pos
        if seasonal is not None:
            x = x + seasonal @ self.step_embed.weight[:, 1:].T
        if self.calendar is not None:
            x = x + self.calendar(future_time)
        return x

    def _decoder_tokens(self, prev: torch.Tensor, known: torch.Tensor, first: int) -> torch.Tensor:
        """(B, T) previous values for steps first..first+T-1 -> decoder input tokens (B, T, D)."""
        T = prev.shape[1]
        return self.drop(known[..., first : first + T, :] + prev[..., None] * self.step_embed.weight[:, 0])

    def _memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [layer.cross_attn.keys_values(memory) for layer in self.decoder]

    # -- the two paths --------------------------------------------------------------------------

    def forward(
        self, past_target: torch.Tensor, past_time: torch.Tensor, future_time: torch.Tensor, decoder_input: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced pass: quantiles (B, H, Q) for all steps in parallel.

        ``decoder_input`` (B, H) is the value fed at each step: ``[last past value, y_1 .. y_{H-1}]``
        under teacher forcing (see :meth:`shift`), possibly mixed with the model's own predictions
        (scheduled sampling). The causal mask keeps step k from seeing inputs after k.
        """
        loc, scale = self.window_stats(past_target)
        past_target, decoder_input = (past_target - loc) / scale, (decoder_input - loc) / scale
        memory_kv = self._memory_kv(self.encode(past_target, past_time))
        seasonal = self.seasonal_inputs(past_target)
        x = self._decoder_tokens(decoder_input, self._known_inputs(seasonal, future_time), 0)
        for layer, kv in zip(self.decoder, memory_kv):
            x = layer(x, kv)
        return self._output(x, seasonal, 0) * scale[..., None] + loc[..., None]

    def median(self, quantiles: torch.Tensor) -> torch.Tensor:
        """(..., Q) -> (...): the median, i.e. the point forecast and the value fed back."""
        return quantiles[..., self.median_index]

    @staticmethod
    def shift(past_target: torch.Tensor, future_target: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing decoder input: (B, W), (B, H) -> [last past value, y_1 .. y_{H-1}] (B, H)."""
        return torch.cat([past_target[:, -1:], future_target[:, :-1]], dim=1)

    @torch.no_grad()
    def forecast(self, past_target: torch.Tensor, past_time: torch.Tensor, future_time: torch.Tensor) -> torch.Tensor:
        """Autoregressive forecast: quantiles (B, H, Q) in scaled units; each step is fed the previous median.

        The encoder runs once; each decoder layer caches its keys/values, so step k costs one
        token's work instead of recomputing steps 0..k-1.
        """
        loc, scale = self.window_stats(past_target)
        past_target = (past_target - loc) / scale
        memory_kv = self._memory_kv(self.encode(past_target, past_time))
        seasonal = self.seasonal_inputs(past_target)
        known = self._known_inputs(seasonal, future_time)
        caches = [{} for _ in self.decoder]
        prev = past_target[:, -1:]  # (B, 1)
        outputs = []
        for k in range(self.horizon):
            x = self._decoder_tokens(prev, known, k)
            for layer, kv, cache in zip(self.decoder, memory_kv, caches):
                x = layer(x, kv, cache)
            out = self._output(x, seasonal, k)  # (B, 1, Q)
            prev = self.median(out)  # (B, 1)
            outputs.append(out)
        return torch.cat(outputs, dim=1) * scale[..., None] + loc[..., None]
