// What a click does: a toast for the outcome, a second click or a dialog before harm.

import { h, setText } from "./dom.js";

// -- toasts ---------------------------------------------------------------------

export function toast(message, kind = "ok") {
  const box = document.getElementById("toasts");
  const el = h("div", { class: `toast toast-${kind}`, role: "status", "data-testid": "toast" }, message);
  box.append(el);
  setTimeout(() => el.classList.add("toast-out"), 3500);
  setTimeout(() => el.remove(), 4000);
}

// Runs an action from a button; the button is disabled meanwhile. The label is the
// toast, or a function of what the work returned; work that returns false was declined.
export async function act(button, label, work) {
  button.disabled = true;
  try {
    const result = await work();
    if (result === false) return false;
    toast(typeof label === "function" ? label(result) : label);
    return true;
  } catch (error) {
    toast(error.message || String(error), "error");
    return false;
  } finally {
    button.disabled = false;
  }
}

// A destructive button asks again on its first click.
export function confirmButton(text, props, onConfirm) {
  let armed = null;
  const button = changeButton(text, { class: "btn btn-danger btn-sm", ...props });
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    if (!armed) {
      button.classList.add("armed");
      setText(button, "Sure?");
      armed = setTimeout(() => {
        armed = null;
        button.classList.remove("armed");
        setText(button, text);
      }, 3000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    button.classList.remove("armed");
    setText(button, text);
    await onConfirm(button);
  });
  return button;
}

// A button that changes something: a read-only page does not show it (see access).
export function changeButton(text, props = {}) {
  return h("button", { type: "button", class: "btn btn-sm", "data-change": "", ...props }, text);
}

// Says what an action will do and waits for a yes: Enter or the button confirms,
// Escape or Cancel does not. The page behind is out of reach (a modal <dialog>).
export function confirmDialog({ title, text, confirm, danger = false }) {
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
    let answer = false;
    form.addEventListener("submit", () => { answer = true; });
    no.addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(answer);
    });
    document.body.append(dialog);
    dialog.showModal();
    yes.focus();
  });
}
