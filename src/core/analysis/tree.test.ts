import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isDowntrained } from "./tree.ts";

describe("downtrained links", () => {
  it("flags a link below what both ends support, not a Gen4 device in a Gen5 slot", () => {
    assert.equal(isDowntrained({ maxSpeed: 32, maxWidth: 16, speed: 16, width: 16 }), true);
    assert.equal(
      isDowntrained(
        { maxSpeed: 32, maxWidth: 16, speed: 16, width: 16 },
        { maxSpeed: 16, maxWidth: 16 },
      ),
      false,
    );
    assert.equal(
      isDowntrained(
        { maxSpeed: 16, maxWidth: 16, speed: 16, width: 8 },
        { maxSpeed: 16, maxWidth: 16 },
      ),
      true,
    );
    assert.equal(
      isDowntrained({ maxSpeed: 16, maxWidth: 16, speed: 16, width: 0 }),
      false,
      "a down link is not 'downtrained'",
    );
    assert.equal(isDowntrained(undefined), false);
  });
});
