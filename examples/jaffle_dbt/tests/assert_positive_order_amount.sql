-- Fails if any order has a zero or negative amount.
select order_id, amount
from {{ ref('orders') }}
where amount <= 0
