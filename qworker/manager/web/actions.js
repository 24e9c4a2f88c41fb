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

// Runs an action from a button; the button is disabled meanwhile.
export async function act(button, label, work) {
  button.disabled = true;
  try {
    await work();
    toast(label);
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
  const button = h("button", { type: "button", class: "btn btn-danger btn-sm", ...props }, text);
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
