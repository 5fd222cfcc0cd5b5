MODEL (
  name shop.orders,
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column order_date
  ),
  grain (order_date, product_id),
  audits (
    not_null(columns := (order_date, product_id, quantity))
  ),
  description 'Daily orders per product, generated for any day so the demo always has data.'
);

SELECT
  days.order_date::DATE AS order_date,
  products.product_id AS product_id,
  1 + ABS(HASH(products.product_id, days.order_date::DATE)) % 5 AS quantity,
  products.price AS unit_price
FROM RANGE(@start_date::TIMESTAMP, @end_date::TIMESTAMP + INTERVAL 1 DAY, INTERVAL 1 DAY) AS days(order_date)
CROSS JOIN shop.products AS products
WHERE
  days.order_date::DATE BETWEEN @start_date AND @end_date
