// The ACL token login: the token is kept in this browser's localStorage and sent with every
// request as X-Consul-Token. Nothing is sent anywhere else.

import { getToken, request, setToken } from "../api.js";
import { h, message, replace } from "../dom.js";

export function tokenPage(ctx) {
  document.title = "Token - proconsul";
  const input = h("input", { type: "password", id: "token-input", autocomplete: "off", spellcheck: "false" });
  const notice = h("div", { id: "token-notice" });
  const state = h("p", { id: "token-state" });
  const showState = () => { state.textContent = getToken() ? "A token is set; requests carry it." : "No token set: requests are anonymous."; };
  showState();
  const logout = h("button", { type: "button", id: "token-logout" }, "Log out");
  const form = h("form", { class: "form", id: "token-form" },
    h("label", { for: "token-input" }, "ACL token (SecretID)", input),
    h("div", { class: "actions" }, h("button", { class: "primary", type: "submit" }, "Log in"), logout), notice);
  ctx.main.append(h("h1", {}, "ACL token"), state, form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    input.value = "";
    showState();
    try {
      await request("/v1/agent/self");
      replace(notice, message("ok", "Token saved."));
    } catch (err) {
      replace(notice, message("warn", `Token saved, but the agent answered: ${err.message}`));
    }
  });
  logout.addEventListener("click", () => { setToken(""); showState(); replace(notice, message("ok", "Logged out.")); });
  input.focus();
}
