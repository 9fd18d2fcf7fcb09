"""ChatWidget: type a prompt, watch the embedded model stream its answer, with a tokens/s meter.

The model is anything with ``stream(prompt, max_new_tokens=..., temperature=..., seed=...)``
yielding text pieces (``bitnet_edu.load_model()`` by default, loaded on the first send), or,
with ``url=``, the instructor's ``bitnet-edu serve`` (:class:`bitnet_edu.serve.client.RemoteModel`:
the same widget, the model on another machine).
Generation goes through :func:`bitnet_edu.deploy.stream_reply`, so the widget gets the same
timeout and measurement as the deployment lesson. Headless use: ``w.send("Once upon")``.

A LoRA adapter: ``ChatWidget(adapter="chat")`` loads the default model with the shipped chat
adapter (or pass a model that has one: ``load_model(adapter=...)``).  A model with an adapter is
prompted in the chat format (``chat_prompt``: the conversation so far, then the generation
prompt), as the adapter was trained; ``chat=True/False`` forces it on or off.
"""

from __future__ import annotations

import html
import time

import ipywidgets as W
import plotly.graph_objects as go

from ..deploy import Limits, check_request, stream_reply
from ..plots import FigureWidget

__all__ = ["ChatWidget"]


def _meter() -> go.Figure:
    fig = go.Figure(go.Indicator(mode="gauge+number", value=0, number={"suffix": " tok/s"},
                                 gauge={"axis": {"range": [0, 50]}, "bar": {"color": "#00cc96"}},
                                 title={"text": "decode speed"}))
    fig.update_layout(height=220, width=300, margin=dict(l=20, r=20, t=40, b=10))
    return fig


class ChatWidget:
    """A prompt box, a send button, a streamed transcript and a live tokens/s gauge.

    Attributes:
        controls: ``prompt`` (Textarea), ``send`` (Button), ``max_new_tokens``, ``temperature``.
        figure: ``go.FigureWidget`` holding one ``Indicator`` (trace 0): tokens/s of the reply.
        transcript: ``ipywidgets.HTML`` with the conversation so far.
        history: list of ``(prompt, Reply)``.
        widget: the ``VBox`` to display.
    """

    def __init__(self, model=None, *, url: str | None = None, api_key: str | None = None,
                 max_new_tokens: int = 48, temperature: float = 0.8, timeout: float = 60.0,
                 limits: Limits = Limits(), refresh_s: float = 0.1, adapter=None,
                 chat: bool | None = None):
        if model is not None and url is not None:
            raise ValueError("give a model or a server url, not both")
        if adapter is not None and (model is not None or url is not None):
            raise ValueError("adapter= loads the default model with that adapter; for your own "
                             "model call model.load_adapter(...) (or load_model(adapter=...))")
        self.adapter, self.chat = adapter, chat
        self._model, self.timeout, self.limits, self.refresh_s = model, timeout, limits, refresh_s
        self.url, self.api_key = url, api_key
        self.controls = {
            "prompt": W.Textarea(value="", placeholder="Type a prompt and press send",
                                 layout=W.Layout(width="100%", height="60px")),
            "send": W.Button(description="send", button_style="primary", icon="paper-plane"),
            "max_new_tokens": W.IntSlider(value=max_new_tokens, min=1, max=256, description="max tokens"),
            "temperature": W.FloatSlider(value=temperature, min=0.0, max=1.5, step=0.05, description="temperature"),
        }
        self.controls["send"].on_click(lambda _: self.send())
        self.transcript = W.HTML(layout=W.Layout(width="100%", max_height="300px", overflow="auto"))
        self.status = W.HTML()
        self.figure = FigureWidget(_meter())
        self.history: list = []
        self.widget = W.VBox([
            W.HBox([W.VBox([self.transcript, self.controls["prompt"],
                            W.HBox([self.controls["send"], self.status])],
                           layout=W.Layout(width="60%")),
                    W.VBox([self.figure, self.controls["max_new_tokens"], self.controls["temperature"]])]),
        ])
        self._render()

    @property
    def model(self):
        """The model, loading the embedded default model on first use."""
        if self._model is None and self.url is not None:
            from ..serve.client import RemoteModel  # stdlib HTTP only

            self._model = RemoteModel(self.url, self.api_key, timeout=self.timeout)
        elif self._model is None:
            from .. import load_model

            self._model = load_model(adapter=self.adapter)
        return self._model

    def _chat_format(self, model) -> bool:
        """Whether prompts go in the chat format: ``chat`` if given, else when the model runs
        a LoRA adapter (a chat adapter answers only in the format it was trained on)."""
        if self.chat is not None:
            return bool(self.chat)
        return getattr(model, "adapter", None) is not None

    def _prompt_text(self, model, prompt: str) -> str:
        if not self._chat_format(model):
            return prompt
        from ..model.generation import chat_prompt

        messages = []
        for p, r in self.history:
            messages += [{"role": "user", "content": p},
                         {"role": "assistant", "content": str(r.text)}]
        return chat_prompt(model, messages + [{"role": "user", "content": prompt}])

    def _render(self, partial: str | None = None, prompt: str | None = None):
        rows = [(p, r.text) for p, r in self.history]
        if partial is not None:
            rows.append((prompt, partial + "▌"))
        self.transcript.value = "".join(
            f"<div><b>you:</b> {html.escape(p)}</div>"
            f"<div style='margin:0 0 8px 1em'><b>model:</b> {html.escape(str(a))}</div>" for p, a in rows)

    def _set_speed(self, tokens: int, seconds: float):
        v = round(tokens / seconds, 1) if seconds > 0 else 0.0
        with self.figure.batch_update():
            self.figure.data[0].value = v
            if v > self.figure.data[0].gauge.axis.range[1]:  # a fast machine: widen the dial
                self.figure.data[0].gauge.axis.range = [0, 1.5 * v]

    def send(self, prompt: str | None = None):
        """Generate a reply to ``prompt`` (default: the prompt box), streaming it into the widget.

        Returns the :class:`bitnet_edu.deploy.Reply`, or ``None`` when the request was refused
        (limits) or no model could be loaded; the reason is shown in ``status``.
        """
        prompt = self.controls["prompt"].value if prompt is None else prompt
        n_new = self.controls["max_new_tokens"].value
        try:
            model = self.model
            text = self._prompt_text(model, prompt) if prompt.strip() else prompt
            check_request(model, text, n_new, self.limits)
        except (ValueError, OSError, ImportError, AttributeError, NotImplementedError) as e:
            self.status.value = f"<span style='color:#c00'>{html.escape(str(e))}</span>"
            return None
        self.controls["send"].disabled = True
        self.status.value = "generating…"
        pieces, t0, last = [], time.perf_counter(), [0.0]

        def on_piece(piece):  # redraw at most every refresh_s: the browser cannot take 1000 msg/s
            pieces.append(str(piece))
            now = time.perf_counter()
            if now - last[0] >= self.refresh_s:
                last[0] = now
                self._render("".join(pieces), prompt)
                self._set_speed(len(pieces), now - t0)

        try:
            temp = self.controls["temperature"].value
            reply = stream_reply(model, text, max_new_tokens=n_new, timeout=self.timeout,
                                 on_piece=on_piece, temperature=temp, seed=len(self.history))
        except ValueError as e:  # e.g. a model without a tokenizer given text
            self.status.value = f"<span style='color:#c00'>{html.escape(str(e))}</span>"
            return None
        finally:
            self.controls["send"].disabled = False
        self.history.append((prompt, reply))
        self._render()
        self._set_speed(reply.tokens, reply.seconds)
        why = "timed out" if reply.timed_out else "done"
        self.status.value = f"{why}: {reply.tokens} tokens in {reply.seconds:.2f} s ({reply.tokens_per_s:.1f} tok/s)"
        self.controls["prompt"].value = ""
        return reply

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
