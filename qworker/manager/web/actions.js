// What a click does: a toast for the outcome, and a dialog before anything is changed
// that cannot be taken back.

import { h } from "./dom.js";

// A keyboard press that lands on a dialog's confirm button this soon after it opened
// was meant for the button that opened it (a double Enter), not for the dialog.
const KEYS_IGNORED_MS = 350;

// -- toasts ---------------------------------------------------------------------

export function toast(message, kind = "ok") {
  const box = document.getElementById("toasts");
  const el = h("div", { class: `toast toast-${kind}`, role: "status", "data-testid": "toast" }, message);
  box.append(el);
  setTimeout(() => el.classList.add("toast-out"), 3500);
  setTimeout(() => el.remove(), 4000);
}

// Runs an action from a button; a second click meanwhile does nothing. The button is
// marked busy, not disabled, so the keyboard's focus stays on it. The label is the
// toast, or a function of what the work returned; work that returns false was declined.
export async function act(button, label, work) {
  if (button.dataset.busy) return false;
  button.dataset.busy = "true";
  button.setAttribute("aria-disabled", "true");
  try {
    const result = await work();
    if (result === false) return false;
    toast(typeof label === "function" ? label(result) : label);
    return true;
  } catch (error) {
    toast(error.message || String(error), "error");
    return false;
  } finally {
    delete button.dataset.busy;
    button.removeAttribute("aria-disabled");
  }
}

// A button that changes something: a read-only page does not show it (see access).
export function changeButton(text, props = {}) {
  return h("button", { type: "button", class: "btn btn-sm", "data-change": "", ...props }, text);
}

// A destructive button: it asks in a dialog first (what: the sentence of the dialog).
export function confirmButton(text, props, what, onConfirm) {
  const button = changeButton(text, { class: "btn btn-danger btn-sm", ...props });
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    const yes = await confirmDialog({ title: `${text}?`, text: what, confirm: text, danger: true });
    if (yes) await onConfirm(button);
  });
  return button;
}

let dialogOpen = false;

// Says what an action will do and waits for a yes: Enter or the button confirms,
// Escape or Cancel does not. The page behind is out of reach (a modal <dialog>), and
// in a dialog that destroys, the focus starts on Cancel. One dialog at a time: asked
// while one is open, the answer is no.
export function confirmDialog({ title, text, confirm, danger = false }) {
  if (dialogOpen) return Promise.resolve(false);
  dialogOpen = true;
  return new Promise((resolve) => {
    const yes = h("button", { type: "submit", class: `btn ${danger ? "btn-danger armed" : "btn-primary"}`,
      "data-testid": "confirm-yes" }, confirm);
    const no = h("button", { type: "button", class: "btn", "data-testid": "confirm-no" }, "Cancel");
    const form = h("form", { method: "dialog" },
      h("h2", { id: "confirm-title" }, title),
      h("p", { "data-testid": "confirm-text" }, text),
      h("div", { class: "dialog-actions" }, no, yes));
    const dialog = h("dialog", { class: "dialog", "data-testid": "confirm-dialog",
      "aria-labelledby": "confirm-title" }, form);
    const opened = performance.now();
    let answer = false;
    yes.addEventListener("click", (event) => {
      // detail 0: pressed from the keyboard, not clicked.
      if (event.detail === 0 && performance.now() - opened < KEYS_IGNORED_MS) event.preventDefault();
    });
    form.addEventListener("submit", () => { answer = true; });
    no.addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      dialog.remove();
      dialogOpen = false;
      resolve(answer);
    });
    document.body.append(dialog);
    dialog.showModal();
    (danger ? no : yes).focus();
  });
}
