"""The event-sourced shopping cart entity (Statehouse e2e user function).

Behaviour matches the official Cloudstate shopping cart samples:

* AddItem with quantity <= 0 fails with
  "Cannot add negative quantity of to item <product_id>";
* AddItem of a product already in the cart increases its quantity;
* RemoveItem of a product not in the cart fails with
  "Cannot remove item <product_id> because it is not in the cart.";
* GetCart returns the items in the order they were first added.

The Python SDK (cloudstate 0.1.1) reports every failure as ``str(list)`` of the
messages, so clients see e.g. "['Cannot remove item x because it is not in the cart.']".

Handler parameters are injected by the SDK by their type annotation, so every
parameter must be annotated with a class the SDK passes an instance of.
"""

from dataclasses import dataclass, field
from typing import Dict

from google.protobuf.empty_pb2 import Empty

from cloudstate.event_sourced_context import EventSourcedCommandContext
from cloudstate.event_sourced_entity import EventSourcedEntity

# Generated at install time by e2e/user-functions/install.sh (not committed).
from shoppingcart import shoppingcart_pb2 as api
from shoppingcart.persistence import domain_pb2 as domain

SERVICE_NAME = "com.example.shoppingcart.ShoppingCart"
PERSISTENCE_ID = "shopping-cart"


@dataclass
class CartState:
    """The cart: product id -> domain line item, in insertion order."""

    entity_id: str
    items: Dict[str, domain.LineItem] = field(default_factory=dict)


def _init(entity_id: str) -> CartState:
    return CartState(entity_id)


entity = EventSourcedEntity(
    api.DESCRIPTOR.services_by_name["ShoppingCart"],
    # Like the official Python sample: only the service's own file. The SDK adds
    # a fixed list of well-known files; the domain file is not included.
    [api.DESCRIPTOR],
    _init,
    persistence_id=PERSISTENCE_ID,
    # The SDK's default, 0: never snapshot. cloudstate 0.1.1 cannot load a snapshot (an init
    # carrying one fails the stream: "'Any' object has no attribute 'payload'"), and its
    # snapshot_every counts sequence numbers from the last replayed event, not per command.
    snapshot_every=0,
)


# ---- events ----------------------------------------------------------------


@entity.event_handler(domain.ItemAdded)
def item_added(state: CartState, event: domain.ItemAdded):
    existing = state.items.get(event.item.productId)
    if existing is not None:
        existing.quantity += event.item.quantity
    else:
        item = domain.LineItem()
        item.CopyFrom(event.item)
        state.items[item.productId] = item


@entity.event_handler(domain.ItemRemoved)
def item_removed(state: CartState, event: domain.ItemRemoved):
    state.items.pop(event.productId, None)


# ---- snapshots (never taken, see above; kept so the entity is complete) ----


@entity.snapshot()
def snapshot(state: CartState):
    cart = domain.Cart()
    cart.items.extend(state.items.values())
    return cart


@entity.snapshot_handler()
def handle_snapshot(state: CartState, cart: domain.Cart):
    state.items = {}
    for snapshot_item in cart.items:
        item = domain.LineItem()
        item.CopyFrom(snapshot_item)
        state.items[item.productId] = item


# ---- commands --------------------------------------------------------------


@entity.command_handler("AddItem")
def add_item(command: api.AddLineItem, ctx: EventSourcedCommandContext):
    if command.quantity <= 0:
        ctx.fail("Cannot add negative quantity of to item {}".format(command.product_id))
        return Empty()
    event = domain.ItemAdded()
    event.item.productId = command.product_id
    event.item.name = command.name
    event.item.quantity = command.quantity
    ctx.emit(event)
    return Empty()


@entity.command_handler("RemoveItem")
def remove_item(state: CartState, command: api.RemoveLineItem, ctx: EventSourcedCommandContext):
    if command.product_id not in state.items:
        ctx.fail("Cannot remove item {} because it is not in the cart.".format(command.product_id))
        return Empty()
    event = domain.ItemRemoved()
    event.productId = command.product_id
    ctx.emit(event)
    return Empty()


@entity.command_handler("GetCart")
def get_cart(state: CartState):
    cart = api.Cart()
    for item in state.items.values():
        cart.items.add(product_id=item.productId, name=item.name, quantity=item.quantity)
    return cart
